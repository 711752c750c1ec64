//! `cargo xtask bench`: the flow table alone (`cargo bench -p sensor --bench flow_table`),
//! then `sensor replay` against tshark on one large capture made by concatenating the dev
//! captures (../shared/data/pcap/dev) end to end with time shifts, each timed in the same
//! run, medians of three.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run};

const ROUNDS: usize = 3;

fn captures(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            captures(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
            out.push(p);
        }
    }
    Ok(())
}

/// First and last packet time of a capture, in seconds (capinfos).
fn span(file: &Path) -> Result<(f64, f64)> {
    let out = Command::new("capinfos")
        .args(["-T", "-r", "-S", "-a", "-e"])
        .arg(file)
        .output()
        .context("capinfos (wireshark-common)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cols: Vec<&str> = text.lines().next().unwrap_or("").split('\t').collect();
    let parse = |i: usize| cols.get(i).and_then(|v| v.trim().parse::<f64>().ok());
    match (parse(1), parse(2)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("capinfos could not time {}: {text}", file.display()),
    }
}

/// Builds (once) the large capture: every dev capture, `copies` times, shifted so that
/// time only moves forward.
fn big_capture(copies: usize) -> Result<PathBuf> {
    let dev = Path::new("../shared/data/pcap/dev");
    let out_dir = PathBuf::from("target/bench");
    let big = out_dir.join(format!("dev-x{copies}.pcapng"));
    if big.is_file() {
        return Ok(big);
    }
    std::fs::create_dir_all(out_dir.join("parts"))?;
    let mut files = Vec::new();
    captures(dev, &mut files)?;
    files.sort();
    let mut cursor = 1_600_000_000.0f64;
    let mut parts = Vec::new();
    for copy in 0..copies {
        for (i, f) in files.iter().enumerate() {
            let Ok((start, end)) = span(f) else {
                eprintln!("xtask: skipping {} (no packet times)", f.display());
                continue;
            };
            let shift = cursor - start;
            let part = out_dir.join(format!("parts/{copy}-{i}.pcapng"));
            let st = Command::new("editcap")
                .args(["-F", "pcapng", "-t", &format!("{shift:.6}")])
                .arg(f)
                .arg(&part)
                .stderr(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("editcap failed on {}", f.display());
            }
            parts.push(part);
            cursor += (end - start).max(0.0) + 1.0;
        }
    }
    run(Command::new("mergecap")
        .args(["-a", "-F", "pcapng", "-w"])
        .arg(&big)
        .args(&parts))?;
    std::fs::remove_dir_all(out_dir.join("parts"))?;
    Ok(big)
}

fn median_secs(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

pub fn bench(copies: usize) -> Result<()> {
    run(cargo().args(["bench", "-p", "sensor", "--bench", "flow_table"]))?;
    run(cargo().args(["build", "--release", "-p", "sensor"]))?;
    let big = big_capture(copies)?;
    let size = std::fs::metadata(&big)?.len();
    let db = PathBuf::from("target/bench/replay.db");
    let sensor = median_secs(|| {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
        let st = Command::new("target/release/sensor")
            .args(["replay", "--db"])
            .arg(&db)
            .arg(&big)
            .env("SENSOR_LOG", "warn")
            .status()?;
        if !st.success() {
            bail!("sensor replay failed");
        }
        Ok(())
    })?;
    let tshark = median_secs(|| {
        let st = Command::new("tshark")
            .args(["-q", "-z", "conv,tcp", "-z", "conv,udp", "-r"])
            .arg(&big)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("tshark failed");
        }
        Ok(())
    })?;
    println!(
        "replay: {} ({:.0} MB): sensor {sensor:.2} s ({:.0} MB/s), tshark -z conv,tcp -z \
         conv,udp {tshark:.2} s; sensor is {:.1}x tshark (medians of {ROUNDS})",
        big.display(),
        size as f64 / 1e6,
        size as f64 / 1e6 / sensor,
        tshark / sensor
    );
    Ok(())
}
