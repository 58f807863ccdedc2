//! The crypto floor: what `chacha20-poly1305@openssh.com` alone costs on
//! one core of this machine, with the implementation russh uses (aws-lc's
//! `chacha20_poly1305_openssh`), on packets of the size the tunnels carry.
//!
//! One hop costs the server one AEAD operation per byte it moves (it opens
//! what the client sealed, or seals what it sends); two hops cost two. So a
//! server's CPU per GB divided by this floor says how much of its work is
//! anything but the cipher.

use std::time::Instant;

use aws_lc_rs::aead::chacha20_poly1305_openssh::{KEY_LEN, OpeningKey, SealingKey, TAG_LEN};
use serde::Serialize;

/// The payload of one full SSH packet as russh sends bulk data: a 32 KiB
/// channel data message plus its headers and padding.
const PACKET: usize = 32 * 1024 + 32;

/// CPU seconds per GB (10^9 bytes) of payload, on one core.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    pub seal_s_per_gb: f64,
    pub open_s_per_gb: f64,
}

impl Floor {
    /// The mean of sealing and opening: one AEAD operation per byte.
    pub fn per_operation(&self) -> f64 {
        (self.seal_s_per_gb + self.open_s_per_gb) / 2.0
    }
}

/// Seals `bytes` in [`PACKET`]-sized packets on this thread, then seals and
/// opens them again (the open after each seal verifies a real tag and gives
/// the buffer back, so nothing is copied); the open's cost is the second
/// loop's less the first's. A warm-up of an eighth as much goes first. Run
/// it where nothing else is measured (the caller does it before the
/// servers are busy).
pub fn measure(bytes: u64) -> Floor {
    let key = [7u8; KEY_LEN];
    let sealing = SealingKey::new(&key);
    let opening = OpeningKey::new(&key);
    let packets = (bytes / PACKET as u64).max(1) as u32;
    let mut buf = vec![0x5au8; PACKET];
    let mut tag = [0u8; TAG_LEN];
    let gb = packets as f64 * PACKET as f64 / 1e9;

    for seq in 0..(packets / 8).max(1) {
        sealing.seal_in_place(seq, &mut buf, &mut tag);
    }
    let start = Instant::now();
    for seq in 0..packets {
        sealing.seal_in_place(seq, &mut buf, &mut tag);
    }
    let seal = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for seq in 0..packets {
        sealing.seal_in_place(seq, &mut buf, &mut tag);
        opening
            .open_in_place(seq, &mut buf, &tag)
            .expect("a packet sealed with the same key opens");
    }
    let both = start.elapsed().as_secs_f64();
    Floor {
        seal_s_per_gb: seal / gb,
        open_s_per_gb: (both - seal).max(0.0) / gb,
    }
}
