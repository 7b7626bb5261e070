//! `pass::process` on arbitrary frame sequences (see `weir_fuzz::run_pass`
//! for the input format): no panic, and every verdict within its promises.
#![no_main]

libfuzzer_sys::fuzz_target!(init: weir_fuzz::init(), |data: &[u8]| weir_fuzz::run_pass(data));
