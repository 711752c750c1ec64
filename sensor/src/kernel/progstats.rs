//! Each eBPF program's run count and run time, from the kernel's program info. The kernel
//! counts them only while `kernel.bpf_stats_enabled` is 1 (off by default: it costs a few
//! nanoseconds per run); otherwise both stay 0.
use std::os::fd::{AsFd, AsRawFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` part of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// (run count, run time in nanoseconds) of the program behind `fd`.
pub fn run_stats(fd: impl AsFd) -> std::io::Result<(u64, u64)> {
    // SAFETY: bpf_prog_info is plain old data; all zeroes is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&mut info as *mut bpf_prog_info) as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &attr as *const InfoByFd,
            size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info.run_cnt, info.run_time_ns))
}

/// Whether the kernel is counting (`kernel.bpf_stats_enabled`).
pub fn enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}
