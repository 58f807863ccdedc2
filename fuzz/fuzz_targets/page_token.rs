//! The fuzz target `page_token`: see `consolegate::fuzzing::page_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::page_token(data));
