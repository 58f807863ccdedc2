//! The fuzz target `escape`: see `consolegate::fuzzing::escape`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::escape(data));
