//! A russh client, for what the real `ssh` cannot be made to do: open
//! many channels at once on one connection, nest inner hops inside it,
//! or ask for what a well-behaved client never asks for. It accepts any
//! host key (a hostile client has no reason to check).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{Config, Handle, Msg};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, ChannelWriteHalf};
use tokio::net::TcpSocket;

use super::{GUARD, find};

/// The client's handler: every host key is accepted.
pub struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A connection of the client, to either hop.
pub type Client = Handle<AnyHostKey>;

/// The client's settings: russh's defaults, with Nagle off.
pub fn config() -> Arc<Config> {
    Arc::new(Config {
        nodelay: true,
        ..Config::default()
    })
}

/// Connects to the outer hop on `port` from `source` (an address of this
/// machine) and authenticates as `user` with the private key in
/// `key_file`; panics if either fails.
pub async fn connect_from(source: &str, port: u16, user: &str, key_file: &Path) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect to the gateway");
    tcp.set_nodelay(true).unwrap();
    let mut client = tokio::time::timeout(
        GUARD,
        russh::client::connect_stream(config(), tcp, AnyHostKey),
    )
    .await
    .expect("key exchange hung")
    .expect("key exchange failed");
    authenticate(&mut client, user, key_file).await;
    client
}

/// Authenticates `client` as `user` with the private key in `key_file`;
/// panics if it is refused.
pub async fn authenticate(client: &mut Client, user: &str, key_file: &Path) {
    let key = Arc::new(russh::keys::load_secret_key(key_file, None).unwrap());
    let result = tokio::time::timeout(
        GUARD,
        client.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None)),
    )
    .await
    .expect("authentication hung")
    .expect("authentication failed");
    assert!(result.success(), "the key was refused: {result:?}");
}

/// Opens an inner hop: a `direct-tcpip` channel to `instance:22` on
/// `outer`, a nested SSH connection over it, authenticated with the same
/// key. The channel open's own error if the outer hop refuses it.
pub async fn inner_hop(
    outer: &Client,
    instance: &str,
    key_file: &Path,
) -> Result<Client, russh::Error> {
    let channel = outer
        .channel_open_direct_tcpip(instance, 22, "127.0.0.1", 0)
        .await?;
    let mut inner = tokio::time::timeout(
        GUARD,
        russh::client::connect_stream(config(), channel.into_stream(), AnyHostKey),
    )
    .await
    .expect("inner key exchange hung")?;
    authenticate(&mut inner, "", key_file).await;
    Ok(inner)
}

/// A console session channel (pty and shell). Its output is read all the
/// time (russh stalls a whole connection when one channel's queue fills)
/// into a buffer that [`Console::saw_within`] searches.
pub struct Console {
    writer: ChannelWriteHalf<Msg>,
    output: Arc<Mutex<Output>>,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Output {
    /// What has arrived and not been consumed by a search.
    unread: Vec<u8>,
    /// The channel has closed.
    closed: bool,
}

impl Console {
    /// Opens a session channel on `client` and asks for a pty and a
    /// shell. The channel open's own error if it is refused.
    pub async fn open(client: &Client) -> Result<Console, russh::Error> {
        let channel = client.channel_open_session().await?;
        channel
            .request_pty(false, "xterm", 80, 24, 0, 0, &[])
            .await?;
        channel.request_shell(false).await?;
        let (mut read, writer) = channel.split();
        let output = Arc::new(Mutex::new(Output::default()));
        let sink = output.clone();
        let reader = tokio::spawn(async move {
            loop {
                match read.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        sink.lock().unwrap().unread.extend_from_slice(&data)
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            sink.lock().unwrap().closed = true;
        });
        Ok(Console {
            writer,
            output,
            reader,
        })
    }

    /// Waits up to `limit` for `needle` in what arrived after the last
    /// match; consumes through it.
    pub async fn saw_within(&self, needle: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let mut out = self.output.lock().unwrap();
                if let Some(pos) = find(&out.unread, needle.as_bytes()) {
                    out.unread.drain(..pos + needle.len());
                    return true;
                }
                if out.closed || tokio::time::Instant::now() >= deadline {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Console::saw_within`] [`GUARD`], or panics with what arrived.
    pub async fn expect(&self, needle: &str) {
        if !self.saw_within(needle, GUARD).await {
            panic!(
                "never saw {needle:?}; the channel showed:\n{}",
                String::from_utf8_lossy(&self.output.lock().unwrap().unread)
            );
        }
    }

    /// Types bytes.
    pub async fn send(&self, bytes: &[u8]) {
        self.writer
            .data_bytes(bytes.to_vec())
            .await
            .expect("send on a console channel");
    }

    /// Whether the channel has been closed.
    pub fn closed(&self) -> bool {
        self.output.lock().unwrap().closed
    }

    /// Closes the channel (and stops reading it).
    pub async fn close(self) {
        let _ = self.writer.close().await;
        self.reader.abort();
    }
}
