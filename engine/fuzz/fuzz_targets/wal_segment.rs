//! Feeds arbitrary bytes to the WAL segment decoder (header, batch headers,
//! records, the torn-tail/corruption rule). It must never panic.
//!
//! The input is used twice: raw (exercising header validation), and as the
//! body of a segment behind a valid header, so the fuzzer reaches the batch
//! and record decoders.
//!
//! `cargo install cargo-fuzz && cd engine/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wal_segment`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ironcd_engine::wal::verify_segment_bytes(data);
    let _ = ironcd_engine::wal::verify_segment_body(0x1234_5678, data);
});
