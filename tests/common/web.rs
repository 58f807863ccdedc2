//! A WebSocket client for the web consoles (tokio-tungstenite over a real
//! socket), remembering what it received, as [`super::Terminal`] does for
//! `ssh`.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::GUARD;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `path` (`/serial?token=…`) on a local HTTP `port`.
pub async fn connect(port: u16, path: &str) -> Socket {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    socket
}

/// Reads binary frames until `want` bytes have arrived.
pub async fn read_binary(socket: &mut Socket, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, async {
        while got.len() < want {
            match socket.next().await {
                Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("display bytes never came");
    got
}

/// Why a WebSocket to `path` on a local HTTP `port` was not opened: the
/// status and the runbook code header. Panics if it was opened.
pub async fn refused_upgrade(port: u16, path: &str) -> (u16, String) {
    let url = format!("ws://127.0.0.1:{port}{path}");
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("x-consolegate-code")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        ),
        Err(e) => panic!("{url}: {e}"),
        Ok(_) => panic!("{url} was opened"),
    }
}

/// A web console client that remembers what it received and not yet
/// consumed, as [`Terminal`] does for `ssh`.
pub struct Web {
    pub socket: Socket,
    pub seen: String,
}

impl Web {
    pub fn new(socket: Socket) -> Web {
        Web {
            socket,
            seen: String::new(),
        }
    }

    /// Reads frames until `needle` appears in what was not yet consumed;
    /// consumes through it and returns what was consumed. Panics if the
    /// socket closes first or the guard time passes.
    pub async fn expect(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(GUARD, async {
            loop {
                if let Some(at) = self.seen.find(needle) {
                    return Some(self.seen.drain(..at + needle.len()).collect());
                }
                match self.socket.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.seen.push_str(&String::from_utf8_lossy(&b))
                    }
                    Some(Ok(Message::Text(t))) => self.seen.push_str(t.as_str()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        found.unwrap_or_else(|| panic!("never received {needle:?}; got:\n{}", self.seen))
    }

    /// Types `text`.
    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Binary(text.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }

    /// Reads until the socket ends; says whether the server sent a close frame.
    pub async fn closed_by_server(&mut self) -> bool {
        tokio::time::timeout(GUARD, async {
            while let Some(frame) = self.socket.next().await {
                match frame {
                    Ok(Message::Close(_)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            false
        })
        .await
        .expect("the socket stayed open")
    }
}
