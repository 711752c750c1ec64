//! Builds the eBPF programs (`sensor-ebpf`) with the nightly toolchain and leaves the object in
//! `OUT_DIR`, where `src/kernel/loader.rs` embeds it.
//!
//! `bpf-linker` is looked up on PATH, then in the cache that `cargo xtask setup` fills
//! (`$SENSOR_TOOLS_DIR`, default `~/.cache/sensor-tools`).
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// Must match `xtask/src/setup.rs`.
const BPF_LINKER_DIR: &str = "bpf-linker-0.13.0-llvm22";

fn tools_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("SENSOR_TOOLS_DIR") {
        return Some(PathBuf::from(dir));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/sensor-tools"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SENSOR_TOOLS_DIR");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    // Builds that never load programs (the fuzzer, quick checks) may skip the eBPF object:
    // an empty one is embedded and `sensor run` says so.
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?).join("sensor");
        std::fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "sensor-ebpf")
        .ok_or_else(|| anyhow!("package sensor-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sensor-ebpf manifest has no parent directory"))?;

    let on_path = which_bpf_linker();
    if !on_path {
        let cached = tools_dir().map(|d| d.join(BPF_LINKER_DIR).join("bin"));
        match cached {
            Some(bin) if bin.join("bpf-linker").is_file() => {
                let path = env::var_os("PATH").unwrap_or_default();
                let mut dirs = vec![bin];
                dirs.extend(env::split_paths(&path));
                let joined = env::join_paths(dirs).context("joining PATH")?;
                // SAFETY: build scripts are single-threaded at this point.
                unsafe { env::set_var("PATH", joined) };
            }
            _ => bail!(
                "bpf-linker not found on PATH nor in the sensor tools cache; \
                 run `cargo xtask setup` first (it installs rust-src, LLVM 22 and bpf-linker)"
            ),
        }
    }

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sensor-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false)
}
