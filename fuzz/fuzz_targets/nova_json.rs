//! The fuzz target `nova_json`: see `consolegate::fuzzing::nova_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::nova_json(data));
