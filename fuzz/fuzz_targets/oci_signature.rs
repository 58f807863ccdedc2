//! The fuzz target `oci_signature`: see `consolegate::fuzzing::oci_signature`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    consolegate::fuzzing::oci_signature(data);
});
