//! The DNS parsers on arbitrary messages (see `weir_fuzz::run_dns`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: weir_fuzz::init(), |data: &[u8]| weir_fuzz::run_dns(data));
