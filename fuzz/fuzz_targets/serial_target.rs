//! The fuzz target `serial_target`: see `consolegate::fuzzing::serial_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::serial_target(data));
