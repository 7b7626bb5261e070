//! The manifest and policy parsers on arbitrary text (see
//! `weir_fuzz::run_manifest`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: weir_fuzz::init(), |data: &[u8]| weir_fuzz::run_manifest(data));
