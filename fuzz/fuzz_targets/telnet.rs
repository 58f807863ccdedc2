//! The fuzz target `telnet`: see `consolegate::fuzzing::telnet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::telnet(data));
