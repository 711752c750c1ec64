//! The store benchmark: persisting flows through the writer against a bare rusqlite
//! prepared-insert loop of the same rows.
use anyhow::Result;

pub fn persist() -> Result<()> {
    eprintln!("xtask: persist benchmark not written yet");
    Ok(())
}
