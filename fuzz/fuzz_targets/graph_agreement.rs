#![no_main]
//! Thin wrapper: the logic lives in `qparity::gen::fuzz::graph_agreement` (replayed on stable by
//! `tests/corpus_replay.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| qparity::gen::fuzz::graph_agreement(data));
