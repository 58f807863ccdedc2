//! The node link's wire: one encrypted, mutually authenticated stream
//! between two nodes of a fleet over one TCP connection, encrypted and
//! decrypted by the tasks that relay the session (no session task of its
//! own between them and the socket).
//!
//! **Handshake.** Noise `NN` (X25519, AES-256-GCM, SHA-256) gives both
//! ends fresh ephemeral keys, the frame keys, and a handshake hash that is
//! unique to this connection. Each end then proves which node it is in a
//! `Hello` frame: its node name and an SSHSIG (namespace
//! `node-link@consolegate`) over its role, that hash and its name, made
//! with the link key it registered in the store. The holding end (the
//! responder) proves itself first; the relaying end sends nothing about a
//! session before it has checked that proof against the key the holder
//! registered. A recorded handshake replayed gets nothing: the holder's
//! ephemeral key is new each time, so the recorded frames do not decrypt
//! and the recorded signature signs another hash.
//!
//! **Frames.** A 2-byte big-endian length, then one Noise transport message
//! (at most 65,535 bytes) whose plaintext is a kind byte and a body. Each
//! direction counts its own nonces, so a frame dropped, replayed or
//! reordered fails to decrypt and ends the connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh::keys::ssh_key::{LineEnding, SshSig};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use snow::StatelessTransportState;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// The Noise protocol of the link.
const PATTERN: &str = "Noise_NN_25519_AESGCM_SHA256";
/// Bound into the handshake hash: a peer speaking another protocol, or
/// another version of this one, fails the handshake.
const PROLOGUE: &[u8] = b"consolegate node link v2";
/// The SSHSIG namespace of the hellos' signatures.
const NAMESPACE: &str = "node-link@consolegate";
/// The largest Noise message.
const MAX_MESSAGE: usize = 65_535;
/// The AEAD tag on each frame.
const TAG: usize = 16;
/// The most body one frame carries; longer bodies go in several frames.
const MAX_BODY: usize = MAX_MESSAGE - TAG - 1;
/// How much sealed output may wait for the socket before a writer waits.
const BACKLOG: usize = 256 * 1024;
/// An end that has sent nothing for this long sends a `Ping`.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// An end that has heard nothing for this long takes its peer for dead;
/// unacknowledged bytes older than this also end the connection (TCP user
/// timeout), so a peer whose machine died is found as well as one whose
/// process did.
pub const SILENT_FOR: Duration = Duration::from_secs(6);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Which node an end is: its name and its signature of the handshake.
    Hello = 1,
    /// The relaying end's request (JSON): the first frame after the hellos.
    Request = 2,
    /// Keystrokes (to the holder), or the screen (from it).
    Data = 3,
    /// How the session ended at the holder: a big-endian `u32` status.
    Exit = 4,
    /// Nothing: the end is alive.
    Ping = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Data,
            4 => Kind::Exit,
            5 => Kind::Ping,
            _ => return None,
        })
    }
}

/// One frame, decrypted.
#[derive(Debug)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its body.
    pub body: Bytes,
}

/// Why a link could not be set up or went on no further.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not this protocol: junk, another version, or a frame that does not
    /// decrypt (tampered with, replayed, reordered).
    #[error("not the node link protocol, or a frame that does not decrypt")]
    Protocol,
    /// The relaying end is not the node it says, or no live node at all:
    /// the name it gave and the fingerprint of the key it signed with.
    #[error("{0:?} is not a live node of the fleet with link key {1}")]
    NotANode(String, String),
    /// The holding end did not prove it is the node that was dialled.
    #[error("the peer did not prove it is node {0}")]
    NotThePeer(String),
}

/// Which end signs: each signs its role too, so a hello cannot be
/// reflected back to the end that made it.
const HOLDER: &str = "holder";
const RELAYER: &str = "relayer";

fn noise() -> snow::Builder<'static> {
    let params = PATTERN.parse().expect("the link's Noise pattern is valid");
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .expect("a prologue is accepted once")
}

/// What a hello's signature covers.
fn signed(role: &str, hash: &[u8], node: &str) -> Vec<u8> {
    [role.as_bytes(), b"\0", hash, node.as_bytes()].concat()
}

/// A hello: the node name (length-prefixed) and the SSHSIG in PEM.
fn hello(key: &PrivateKey, role: &str, hash: &[u8], node: &str) -> Result<Vec<u8>, WireError> {
    let name = u8::try_from(node.len())
        .map_err(|_| io::Error::other("a node name is at most 255 bytes"))?;
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, &signed(role, hash, node))
        .and_then(|s| s.to_pem(LineEnding::LF))
        .map_err(|e| io::Error::other(format!("cannot sign with the link key: {e}")))?;
    Ok([&[name][..], node.as_bytes(), sig.as_bytes()].concat())
}

fn read_hello(frame: Frame) -> Result<(String, SshSig), WireError> {
    let body = &frame.body;
    if frame.kind != Kind::Hello || body.is_empty() {
        return Err(WireError::Protocol);
    }
    let end = 1 + usize::from(body[0]);
    let node = body
        .get(1..end)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or(WireError::Protocol)?;
    let sig = SshSig::from_pem(&body[end..]).map_err(|_| WireError::Protocol)?;
    Ok((node.to_owned(), sig))
}

fn proves(key: &PublicKey, role: &str, hash: &[u8], node: &str, sig: &SshSig) -> bool {
    key.verify(NAMESPACE, &signed(role, hash, node), sig)
        .is_ok()
}

/// No delay for keystrokes; a peer that stops acknowledging is dead.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(SILENT_FOR));
}

async fn write_raw(tcp: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(io::Error::other)?;
    tcp.write_all(&[&len.to_be_bytes()[..], message].concat())
        .await
}

async fn read_raw(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut message).await?;
    Ok(message)
}

/// Opens the link over `tcp` as the relaying end, node `me` with `key`, to
/// node `peer`, which must prove it holds `peer_key`.
pub async fn dial(
    mut tcp: TcpStream,
    me: &str,
    key: &PrivateKey,
    peer: &str,
    peer_key: &PublicKey,
) -> Result<(Sender, Receiver), WireError> {
    tune(&tcp);
    let mut handshake = noise().build_initiator().map_err(|_| WireError::Protocol)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = handshake
        .write_message(&[], &mut buf)
        .map_err(|_| WireError::Protocol)?;
    write_raw(&mut tcp, &buf[..n]).await?;
    let answer = read_raw(&mut tcp).await?;
    handshake
        .read_message(&answer, &mut buf)
        .map_err(|_| WireError::Protocol)?;
    let hash = handshake.get_handshake_hash().to_vec();
    let transport = handshake
        .into_stateless_transport_mode()
        .map_err(|_| WireError::Protocol)?;
    let (tx, mut rx) = split(tcp, transport);
    let (node, sig) = read_hello(rx.next().await?.ok_or(WireError::Protocol)?)?;
    if node != peer || !proves(peer_key, HOLDER, &hash, &node, &sig) {
        return Err(WireError::NotThePeer(peer.to_owned()));
    }
    tx.send(Kind::Hello, &hello(key, RELAYER, &hash, me)?)
        .await?;
    Ok((tx, rx))
}

/// Answers the link on `tcp` as the holding end, node `me` with `key`, up
/// to the relaying end's hello: who it says it is waits for
/// [`Accepted::verify`] with the key that node registered.
pub async fn accept(mut tcp: TcpStream, me: &str, key: &PrivateKey) -> Result<Accepted, WireError> {
    tune(&tcp);
    let mut handshake = noise().build_responder().map_err(|_| WireError::Protocol)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let opening = read_raw(&mut tcp).await?;
    handshake
        .read_message(&opening, &mut buf)
        .map_err(|_| WireError::Protocol)?;
    let n = handshake
        .write_message(&[], &mut buf)
        .map_err(|_| WireError::Protocol)?;
    write_raw(&mut tcp, &buf[..n]).await?;
    let hash = handshake.get_handshake_hash().to_vec();
    let transport = handshake
        .into_stateless_transport_mode()
        .map_err(|_| WireError::Protocol)?;
    let (tx, mut rx) = split(tcp, transport);
    tx.send(Kind::Hello, &hello(key, HOLDER, &hash, me)?)
        .await?;
    let (node, sig) = read_hello(rx.next().await?.ok_or(WireError::Protocol)?)?;
    Ok(Accepted {
        node,
        sig,
        hash,
        tx,
        rx,
    })
}

/// A link whose relaying end has said which node it is, not yet checked.
pub struct Accepted {
    node: String,
    sig: SshSig,
    hash: Vec<u8>,
    tx: Sender,
    rx: Receiver,
}

impl Accepted {
    /// The node the relaying end says it is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The link, if the relaying end proved it holds `key`, the link key
    /// its node registered (`None`: no live node of that name).
    pub fn verify(self, key: Option<&PublicKey>) -> Result<(String, Sender, Receiver), WireError> {
        match key {
            Some(key) if proves(key, RELAYER, &self.hash, &self.node, &self.sig) => {
                Ok((self.node, self.tx, self.rx))
            }
            _ => {
                let signer = PublicKey::from(self.sig.public_key().clone());
                Err(WireError::NotANode(
                    self.node,
                    signer.fingerprint(HashAlg::Sha256).to_string(),
                ))
            }
        }
    }
}

fn split(tcp: TcpStream, transport: StatelessTransportState) -> (Sender, Receiver) {
    let noise = Arc::new(transport);
    let (read, write) = tcp.into_split();
    let tx = Sender(Arc::new(Mutex::new(Sealing {
        half: write,
        noise: noise.clone(),
        nonce: 0,
        out: BytesMut::new(),
        plain: Vec::new(),
        last: Instant::now(),
    })));
    let rx = Receiver {
        half: read,
        noise,
        nonce: 0,
        raw: BytesMut::new(),
    };
    (tx, rx)
}

/// The sending half of a link; clones share it (frames keep the order in
/// which they were queued).
#[derive(Clone)]
pub struct Sender(Arc<Mutex<Sealing>>);

struct Sealing {
    half: OwnedWriteHalf,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Sealed frames not yet written.
    out: BytesMut,
    /// Scratch for a frame's plaintext.
    plain: Vec<u8>,
    /// When a frame was last queued.
    last: Instant,
}

impl Sealing {
    fn seal(&mut self, kind: Kind, chunk: &[u8]) -> Result<(), WireError> {
        self.plain.clear();
        self.plain.push(kind as u8);
        self.plain.extend_from_slice(chunk);
        let len = self.plain.len() + TAG;
        let start = self.out.len();
        self.out.put_u16(len as u16);
        self.out.resize(start + 2 + len, 0);
        self.noise
            .write_message(self.nonce, &self.plain, &mut self.out[start + 2..])
            .map_err(|_| WireError::Protocol)?;
        self.nonce += 1;
        Ok(())
    }
}

impl Sender {
    fn lock(&self) -> MutexGuard<'_, Sealing> {
        // Only a panic while sealing poisons it; the frames are then lost
        // anyway.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals a frame (several, for a long body) to be written by the next
    /// flush.
    pub fn queue(&self, kind: Kind, body: &[u8]) -> Result<(), WireError> {
        let mut sealing = self.lock();
        let mut chunks = body.chunks(MAX_BODY);
        let first = chunks.next().unwrap_or_default();
        for chunk in std::iter::once(first).chain(chunks) {
            sealing.seal(kind, chunk)?;
        }
        sealing.last = Instant::now();
        Ok(())
    }

    /// Writes what is queued.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sealing = self.lock();
        let s = &mut *sealing;
        while !s.out.is_empty() {
            let n = ready!(Pin::new(&mut s.half).poll_write(cx, &s.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            s.out.advance(n);
        }
        Pin::new(&mut s.half).poll_flush(cx)
    }

    /// Sends one frame.
    pub async fn send(&self, kind: Kind, body: &[u8]) -> Result<(), WireError> {
        self.queue(kind, body)?;
        std::future::poll_fn(|cx| self.poll_flush(cx)).await?;
        Ok(())
    }

    /// When this end last queued a frame.
    pub fn last_sent(&self) -> Instant {
        self.lock().last
    }

    /// Sends a `Ping` if nothing was sent for [`PING_EVERY`]; otherwise
    /// waits until it would be due.
    pub async fn keep_alive(&self) -> Result<(), WireError> {
        let due = self.last_sent() + PING_EVERY;
        tokio::time::sleep_until(due).await;
        if self.last_sent() + PING_EVERY <= Instant::now() {
            self.send(Kind::Ping, &[]).await?;
        }
        Ok(())
    }

    /// Writes what is queued, then closes this direction.
    pub async fn close(&self) {
        if std::future::poll_fn(|cx| self.poll_flush(cx)).await.is_ok() {
            let _ =
                std::future::poll_fn(|cx| Pin::new(&mut self.lock().half).poll_shutdown(cx)).await;
        }
    }

    fn backlog(&self) -> usize {
        self.lock().out.len()
    }
}

/// The receiving half of a link.
pub struct Receiver {
    half: OwnedReadHalf,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes read, not yet a whole frame.
    raw: BytesMut,
}

impl Receiver {
    /// The next frame; `None` when the peer closed the link between
    /// frames. Cancel-safe: a frame half read stays for the next call.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(Some(frame));
            }
            self.raw.reserve(MAX_MESSAGE + 2);
            if self.half.read_buf(&mut self.raw).await? == 0 {
                return if self.raw.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
                };
            }
        }
    }

    /// The next frame, if one has been read whole.
    fn take(&mut self) -> Result<Option<Frame>, WireError> {
        if self.raw.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.raw[0], self.raw[1]]));
        if len <= TAG {
            return Err(WireError::Protocol);
        }
        if self.raw.len() < 2 + len {
            return Ok(None);
        }
        let sealed = self.raw.split_to(2 + len);
        let mut plain = vec![0u8; len - TAG];
        let n = self
            .noise
            .read_message(self.nonce, &sealed[2..], &mut plain)
            .map_err(|_| WireError::Protocol)?;
        self.nonce += 1;
        let kind = Kind::from_byte(plain[0]).ok_or(WireError::Protocol)?;
        plain.truncate(n);
        Ok(Some(Frame {
            kind,
            body: Bytes::from(plain).slice(1..),
        }))
    }
}

/// The screen of a relayed session at the holding end: what is written
/// goes out as `Data` frames, sealed by the writing task.
pub struct Screen(pub Sender);

impl AsyncWrite for Screen {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.0.backlog() >= BACKLOG {
            ready!(self.0.poll_flush(cx))?;
        }
        let n = buf.len().min(BACKLOG);
        self.0
            .queue(Kind::Data, &buf[..n])
            .map_err(io::Error::other)?;
        // Out at once where the socket takes it; the rest on flush.
        if let Poll::Ready(Err(e)) = self.0.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::Algorithm;
    use tokio::net::TcpListener;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    /// A connected pair of sockets on loopback.
    async fn sockets() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap());
        let (a, b) = tokio::join!(dialled, listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Both ends of a link between "relayer" (`r`) and "holder" (`h`),
    /// as the holder checks it against `registered`.
    async fn link(
        r: &PrivateKey,
        h: &PrivateKey,
        expected: &PublicKey,
        registered: Option<&PublicKey>,
    ) -> (
        Result<(Sender, Receiver), WireError>,
        Result<(String, Sender, Receiver), WireError>,
    ) {
        let (a, b) = sockets().await;
        let holding = async {
            let accepted = accept(b, "holder", h).await?;
            assert_eq!(accepted.node(), "relayer");
            accepted.verify(registered)
        };
        tokio::join!(dial(a, "relayer", r, "holder", expected), holding)
    }

    #[tokio::test]
    async fn both_ends_prove_their_keys_and_frames_arrive_whole_and_in_order() {
        let (r, h) = (key(), key());
        let (relaying, holding) = link(&r, &h, h.public_key(), Some(r.public_key())).await;
        let (rtx, mut rrx) = relaying.unwrap();
        let (node, htx, mut hrx) = holding.unwrap();
        assert_eq!(node, "relayer");

        rtx.send(Kind::Request, b"{}").await.unwrap();
        // Longer than one frame: split, and joined again by the reader.
        let long: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sending = async {
            let mut screen = Screen(htx.clone());
            screen.write_all(&long).await.unwrap();
            screen.flush().await.unwrap();
            htx.send(Kind::Exit, &75u32.to_be_bytes()).await.unwrap();
            htx.close().await;
        };
        let receiving = async {
            let mut got = Vec::new();
            loop {
                let frame = rrx.next().await.unwrap().unwrap();
                match frame.kind {
                    Kind::Data => got.extend_from_slice(&frame.body),
                    Kind::Exit => {
                        assert_eq!(&frame.body[..], &75u32.to_be_bytes());
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(
                rrx.next().await.unwrap().is_none(),
                "the link did not close"
            );
            got
        };
        let ((), got) = tokio::join!(sending, receiving);
        assert_eq!(got, long);
        let request = hrx.next().await.unwrap().unwrap();
        assert_eq!(
            (request.kind, &request.body[..]),
            (Kind::Request, &b"{}"[..])
        );
    }

    #[tokio::test]
    async fn a_relayer_without_its_registered_key_is_refused() {
        let (r, h, other) = (key(), key(), key());
        let (_, holding) = link(&r, &h, h.public_key(), Some(other.public_key())).await;
        assert!(matches!(holding, Err(WireError::NotANode(n, f))
            if n == "relayer" && f == r.public_key().fingerprint(HashAlg::Sha256).to_string()));
        let (_, holding) = link(&r, &h, h.public_key(), None).await;
        assert!(matches!(holding, Err(WireError::NotANode(..))));
    }

    #[tokio::test]
    async fn a_holder_that_is_not_the_node_dialled_gets_no_hello() {
        let (r, h, other) = (key(), key(), key());
        let (relaying, holding) = link(&r, &h, other.public_key(), Some(r.public_key())).await;
        assert!(matches!(relaying, Err(WireError::NotThePeer(n)) if n == "holder"));
        // The relayer hung up without its hello.
        assert!(holding.is_err());
    }

    #[tokio::test]
    async fn junk_and_tampered_frames_end_the_link() {
        let h = key();
        // Junk too short to be a handshake.
        let (mut a, b) = sockets().await;
        a.write_all(&[0x00, 0x05, 7, 7, 7, 7, 7]).await.unwrap();
        assert!(matches!(
            accept(b, "holder", &h).await,
            Err(WireError::Protocol)
        ));
        // Junk that passes for an ephemeral key, then junk for a hello.
        let (mut a, b) = sockets().await;
        a.write_all(&[0x00, 0x20]).await.unwrap();
        a.write_all(&[7u8; 32]).await.unwrap();
        a.write_all(&[0x00, 0x30]).await.unwrap();
        a.write_all(&[9u8; 0x30]).await.unwrap();
        assert!(matches!(
            accept(b, "holder", &h).await,
            Err(WireError::Protocol)
        ));

        // One byte changed in an established link.
        let r = key();
        let (a, b) = sockets().await;
        let (relaying, holding) =
            tokio::join!(dial(a, "relayer", &r, "holder", h.public_key()), async {
                accept(b, "holder", &h).await?.verify(Some(r.public_key()))
            });
        let (rtx, _rrx) = relaying.unwrap();
        let (_, _htx, mut hrx) = holding.unwrap();
        rtx.queue(Kind::Data, b"typed").unwrap();
        {
            let mut sealing = rtx.lock();
            let last = sealing.out.len() - 1;
            sealing.out[last] ^= 1;
        }
        std::future::poll_fn(|cx| rtx.poll_flush(cx)).await.unwrap();
        assert!(matches!(hrx.next().await, Err(WireError::Protocol)));
    }

    #[tokio::test]
    async fn a_recorded_relayer_replayed_gets_nothing() {
        let (r, h) = (key(), key());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let holder_at = listener.local_addr().unwrap();
        // A proxy that records what the relayer sends.
        let (a, proxy_in) = sockets().await;
        let tape = Arc::new(Mutex::new(Vec::new()));
        let recording = tape.clone();
        tokio::spawn(async move {
            let out = TcpStream::connect(holder_at).await.unwrap();
            let (mut from_relayer, mut to_relayer) = proxy_in.into_split();
            let (mut from_holder, mut to_holder) = out.into_split();
            let up = async {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from_relayer.read(&mut buf).await {
                    recording.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_holder.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::join!(up, tokio::io::copy(&mut from_holder, &mut to_relayer));
        });
        let holding = async {
            let (b, _) = listener.accept().await.unwrap();
            let (_, _tx, mut rx) = accept(b, "holder", &h)
                .await?
                .verify(Some(r.public_key()))?;
            rx.next().await
        };
        let relaying = async {
            let (tx, rx) = dial(a, "relayer", &r, "holder", h.public_key()).await?;
            tx.send(Kind::Request, b"{}").await?;
            Ok::<_, WireError>((tx, rx))
        };
        let (relaying, request) = tokio::join!(relaying, holding);
        let _link = relaying.unwrap();
        assert_eq!(request.unwrap().unwrap().kind, Kind::Request);

        // The same bytes again: the holder's fresh ephemeral key makes the
        // recorded hello undecryptable.
        let tape = tape.lock().unwrap().clone();
        let (mut c, d) = sockets().await;
        let holder = tokio::spawn(async move { accept(d, "holder", &h).await.map(|_| ()) });
        c.write_all(&tape).await.unwrap();
        assert!(matches!(holder.await.unwrap(), Err(WireError::Protocol)));
    }
}
