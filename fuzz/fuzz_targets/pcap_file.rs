//! The capture file reader must never panic, whatever the bytes: a damaged file is an error
//! naming the file and the offset, and packets before the damage are still handed over.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sensor::capture::file::{FileError, read_from};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.pcap");
    let mut frames = 0u64;
    let result = read_from(path, data, |_, _, frame| {
        frames += 1;
        // A frame is never longer than the input it came from.
        assert!(frame.len() <= data.len());
    });
    match result {
        Ok(stats) => assert!(stats.packets >= frames),
        Err(e) => {
            assert!(e.to_string().contains("fuzz.pcap"), "{e}");
            if let FileError::Damaged { offset, .. } | FileError::Truncated { offset, .. } = e {
                assert!(offset as usize <= data.len(), "offset {offset} past the input");
            }
        }
    }
});
