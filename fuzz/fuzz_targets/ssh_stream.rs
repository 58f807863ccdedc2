//! The fuzz target `ssh_stream`: see `consolegate_fuzz::live::ssh_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate_fuzz::live::ssh_stream(data));
