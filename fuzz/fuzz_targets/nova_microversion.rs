//! The fuzz target `nova_microversion`: see `consolegate::fuzzing::nova_microversion`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::nova_microversion(data));
