//! Query benchmarks: `sensor export` of 1 M flows, `sensor top` over 10 M flows.
use anyhow::Result;

pub fn export() -> Result<()> {
    eprintln!("xtask: export benchmark not written yet");
    Ok(())
}

pub fn top() -> Result<()> {
    eprintln!("xtask: top benchmark not written yet");
    Ok(())
}
