//! The service's life under systemd's protocol, with a notify socket the test owns in
//! place of systemd: READY after the start, WATCHDOG while healthy, RELOADING/READY around
//! SIGHUP (a bad config keeps the running one), STOPPING at SIGTERM.
mod common;

use std::{
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{sensor_bin, temp_dir};

struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    /// Waits for a datagram containing `needle`; returns it.
    fn wait(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} within {secs} s; got {:?}",
                self.seen
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == needle) {
                    return msg;
                }
            }
        }
    }
}

#[test]
fn notify_ready_watchdog_reload_and_stop() {
    let dir = temp_dir("lifecycle");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut notify = Notify {
        sock,
        seen: Vec::new(),
    };
    let threat = dir.join("lists");
    std::fs::create_dir_all(&threat).unwrap();
    std::fs::write(threat.join("mine.netset"), "198.51.100.0/24\n").unwrap();
    let cfg = dir.join("sensor.toml");
    let good = format!(
        "[enrich]\nrdns = false\nthreat_dir = \"{}\"\n",
        threat.display()
    );
    std::fs::write(&cfg, &good).unwrap();
    let prom = dir.join("final.prom");
    let mut child = Command::new(sensor_bin())
        .args([
            "run",
            "--hooks",
            "none",
            "--no-capture",
            "--metrics-addr",
            "",
        ])
        .arg("--db")
        .arg(dir.join("flows.db"))
        .arg("--config")
        .arg(&cfg)
        .arg("--metrics-on-exit")
        .arg(&prom)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let ready = notify.wait("READY=1", 30);
    assert!(ready.contains("STATUS="), "{ready}");
    // WatchdogSec 2 s: fed at least every second while every stage beats.
    notify.wait("WATCHDOG=1", 5);
    notify.wait("WATCHDOG=1", 5);

    // SIGHUP with a good config: reloading, then ready again.
    std::fs::write(threat.join("more.ipset"), "203.0.113.7\n").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = notify.wait("RELOADING=1", 10);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let again = notify.wait("READY=1", 10);
    assert!(again.contains("STATUS=reloaded"), "{again}");

    // A config with an unknown key: refused, the running one stays.
    std::fs::write(&cfg, format!("{good}bogus_key = 1\n")).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    notify.wait("RELOADING=1", 10);
    let failed = notify.wait("READY=1", 10);
    assert!(failed.contains("reload failed"), "{failed}");
    notify.wait("WATCHDOG=1", 5);

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    notify.wait("STOPPING=1", 10);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("enrichment sources reopened"), "{log}");
    assert!(
        log.contains("keeping the running configuration") && log.contains("bogus_key"),
        "{log}"
    );
    let m = std::fs::read_to_string(&prom).unwrap();
    assert!(
        m.contains("sensor_enrich_reloads_total{result=\"ok\",source=\"mmdb\"} 1"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
