//! The fuzz target `client_key`: see `consolegate::fuzzing::client_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::client_key(data));
