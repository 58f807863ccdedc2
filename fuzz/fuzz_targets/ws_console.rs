//! The fuzz target `ws_console`: see `consolegate_fuzz::live::ws_console`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate_fuzz::live::ws_console(data));
