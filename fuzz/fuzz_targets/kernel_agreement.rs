#![no_main]
//! Thin wrapper: the logic lives in `qparity::gen::fuzz::kernel_agreement` (replayed on stable by
//! `tests/corpus_replay.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| qparity::gen::fuzz::kernel_agreement(data));
