#![no_std]
// Exists so that `sensor`'s build script can depend on this crate and be rebuilt when it
// changes; the programs themselves are the `sensor` binary target in main.rs.
