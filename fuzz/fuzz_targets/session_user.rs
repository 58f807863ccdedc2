//! The fuzz target `session_user`: see `consolegate::fuzzing::session_user`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::session_user(data));
