//! The store benchmark: persisting flows through the writer against a bare rusqlite
//! prepared-insert loop of the same rows (`cargo bench -p sensor --bench persist`).
use anyhow::Result;

use crate::{cargo, run};

pub fn persist() -> Result<()> {
    run(cargo().args(["bench", "-p", "sensor", "--bench", "persist"]))
}
