//! The HTTP inspector over arbitrary client→server segment streams (see
//! `weir_fuzz::run_http` for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(init: weir_fuzz::init(), |data: &[u8]| weir_fuzz::run_http(data));
