//! An SSE upstream whose every event the test releases by hand.
//!
//! It speaks just enough HTTP/1.1 to stand in for a provider: it reads one request, answers
//! `200 text/event-stream` with chunked transfer encoding, and writes each event only when the
//! test calls [`SseExchange::send`]. A test can therefore prove that an event reached the client
//! while the upstream was still streaming, without any timing assumption.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The upstream server; stops accepting on drop.
pub struct GatedSseUpstream {
    addr: SocketAddr,
    exchanges: mpsc::UnboundedReceiver<SseExchange>,
    accept_task: JoinHandle<()>,
}

/// One request received, and the pen for its response stream.
pub struct SseExchange {
    /// The request line and headers as received.
    pub head: String,
    pub body: Vec<u8>,
    events: mpsc::UnboundedSender<Vec<u8>>,
}

impl SseExchange {
    /// Writes `data: <data>\n\n` to the response now.
    pub fn send(&self, data: &str) {
        let _ = self.events.send(format!("data: {data}\n\n").into_bytes());
    }
    /// Ends the response (dropping the exchange does the same).
    pub fn finish(self) {}
}

impl GatedSseUpstream {
    pub async fn start() -> GatedSseUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gated upstream");
        let addr = listener.local_addr().expect("local addr");
        let (tx, exchanges) = mpsc::unbounded_channel();
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        GatedSseUpstream {
            addr,
            exchanges,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request that arrives (waits up to `deadline`).
    pub async fn next_exchange(&mut self, deadline: std::time::Duration) -> SseExchange {
        tokio::time::timeout(deadline, self.exchanges.recv())
            .await
            .expect("timed out waiting for a request at the gated upstream")
            .expect("gated upstream stopped")
    }
}

impl Drop for GatedSseUpstream {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn serve(mut stream: TcpStream, exchanges: mpsc::UnboundedSender<SseExchange>) {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let content_length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    if chunked {
        while find(&body, b"0\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body = dechunk(&body);
    } else {
        while body.len() < content_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    if exchanges
        .send(SseExchange {
            head,
            body,
            events: tx,
        })
        .is_err()
    {
        return;
    }
    let response_head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                         cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if stream.write_all(response_head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(event) = events.recv().await {
        let frame = [
            format!("{:x}\r\n", event.len()).into_bytes(),
            event,
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = stream.shutdown().await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size = std::str::from_utf8(&data[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}
