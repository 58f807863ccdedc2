//! The fuzz target `oci_json`: see `consolegate::fuzzing::oci_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| consolegate::fuzzing::oci_json(data));
