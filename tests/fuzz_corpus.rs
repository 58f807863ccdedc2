//! The fuzz targets' inputs as regression tests, on the stable toolchain:
//! every seed in `fuzz/corpus/<target>/` and every crash ever found, kept in
//! `fuzz/regressions/<target>/`, goes through the code its target fuzzes.
//! The parsers' targets run in this process; `ssh_stream` and `ws_console`
//! speak to a real gateway on loopback ports, the same harness the fuzzer
//! uses (`fuzz/src/live.rs`). FUZZING.md says how to run the fuzzers.

#[path = "../fuzz/src/live.rs"]
mod live;

use std::path::{Path, PathBuf};

use consolegate::fuzzing;

type Target = fn(&[u8]);

/// Every fuzz target and the function it calls.
const TARGETS: &[(&str, Target)] = &[
    ("config", fuzzing::config),
    ("client_key", fuzzing::client_key),
    ("session_user", fuzzing::session_user),
    ("escape", fuzzing::escape),
    ("telnet", fuzzing::telnet),
    ("serial_target", fuzzing::serial_target),
    ("page_token", fuzzing::page_token),
    ("nova_microversion", fuzzing::nova_microversion),
    ("oci_signature", |data| {
        fuzzing::oci_signature(data);
    }),
    ("oci_json", fuzzing::oci_json),
    ("nova_json", fuzzing::nova_json),
    ("ssh_stream", live::ssh_stream),
    ("ws_console", live::ws_console),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none if it does not exist.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect()
}

fn run(target: &str) {
    let (_, call) = TARGETS.iter().find(|(name, _)| *name == target).unwrap();
    let seeds = inputs("corpus", target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seeds");
    for (path, data) in seeds.iter().chain(&inputs("regressions", target)) {
        eprintln!("{}", path.display());
        call(data);
    }
}

#[test]
fn every_fuzz_target_is_listed_here_and_has_seeds() {
    let mut built: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    built.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(built, listed, "fuzz/fuzz_targets and this file disagree");
    for (name, _) in TARGETS {
        assert!(
            !inputs("corpus", name).is_empty(),
            "fuzz/corpus/{name} has no seeds"
        );
    }
    // A regression directory names a target that exists.
    if let Ok(dir) = std::fs::read_dir(fuzz_dir().join("regressions")) {
        for entry in dir {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                listed.contains(&name),
                "fuzz/regressions/{name}: no such target"
            );
        }
    }
}

#[test]
fn the_signed_seeds_pass_verification_and_a_flipped_bit_does_not() {
    let signed: Vec<_> = inputs("corpus", "oci_signature")
        .into_iter()
        .filter(|(path, _)| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("signed-")
        })
        .collect();
    assert!(signed.len() >= 3);
    for (path, data) in signed {
        assert!(
            fuzzing::oci_signature(&data),
            "{} does not verify",
            path.display()
        );
        let mut tampered = data.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        if path.to_string_lossy().ends_with("create") {
            assert!(
                !fuzzing::oci_signature(&tampered),
                "a changed body verified"
            );
        }
    }
}

#[test]
fn ws_console_frames_are_encoded_as_a_client_sends_them() {
    // FIN, binary, 2 bytes, masked.
    let wire = live::frames(&[0x82, 2, b'h', b'i']);
    assert_eq!(&wire[..2], &[0x82, 0x82]);
    let mask = &wire[2..6];
    assert_eq!([wire[6] ^ mask[0], wire[7] ^ mask[1]], *b"hi");
    // A raw frame goes on the wire as it is; a length past the end is cut.
    assert_eq!(live::frames(&[0x40, 9, 1, 2, 3]), vec![1, 2, 3]);
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run(stringify!($name));
        }
    )*};
}

corpus_tests!(
    config,
    client_key,
    session_user,
    escape,
    telnet,
    serial_target,
    page_token,
    nova_microversion,
    oci_signature,
    oci_json,
    nova_json,
    ssh_stream,
    ws_console,
);
