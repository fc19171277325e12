//! A tiny HTTP/1.1 server for sink tests: it answers the first `fail_first` requests itself with
//! a given status (a server in trouble) and forwards the rest to a real server, or answers every
//! request itself when there is no upstream (a server that refuses everything).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The canned answer for failed requests.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

type Fail = Arc<dyn Fn(usize, &str) -> bool + Send + Sync>;

pub struct FlakyServer {
    pub addr: SocketAddr,
    /// Requests seen so far.
    pub requests: Arc<AtomicUsize>,
    /// Requests answered with the canned answer so far.
    pub failed: Arc<AtomicUsize>,
    /// The most requests it was handling at once.
    pub most_at_once: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What every connection of a server shares.
#[derive(Clone)]
struct Shared {
    upstream: Option<SocketAddr>,
    fail: Fail,
    answer: Answer,
    /// How long to hold each request before handling it.
    delay: std::time::Duration,
    requests: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyServer {
    /// Fail the first `n` requests with `answer`, forward the others to `upstream` (every
    /// request fails when there is none).
    pub async fn start(upstream: Option<SocketAddr>, n: usize, answer: Answer) -> Self {
        Self::start_with(upstream, move |i, _| i < n, answer).await
    }

    /// Fail the requests for which `fail(index, request head)` holds with `answer`, forward
    /// the others to `upstream` (every request fails when there is none).
    pub async fn start_with(
        upstream: Option<SocketAddr>,
        fail: impl Fn(usize, &str) -> bool + Send + Sync + 'static,
        answer: Answer,
    ) -> Self {
        Self::start_on("127.0.0.1:0", upstream, fail, answer).await
    }

    /// [`FlakyServer::start_with`] on a given address (a server that comes back where it was).
    pub async fn start_on(
        at: &str,
        upstream: Option<SocketAddr>,
        fail: impl Fn(usize, &str) -> bool + Send + Sync + 'static,
        answer: Answer,
    ) -> Self {
        Self::serve(
            at,
            upstream,
            Arc::new(fail),
            answer,
            std::time::Duration::ZERO,
        )
        .await
    }

    /// A server that forwards every request to `upstream` after holding it for `delay` (a
    /// slow server): [`FlakyServer::most_at_once`] tells how many a client sent at once.
    pub async fn slow(upstream: SocketAddr, delay: std::time::Duration) -> Self {
        let answer = Answer::new(500, "");
        Self::serve(
            "127.0.0.1:0",
            Some(upstream),
            Arc::new(|_, _| false),
            answer,
            delay,
        )
        .await
    }

    async fn serve(
        at: &str,
        upstream: Option<SocketAddr>,
        fail: Fail,
        answer: Answer,
        delay: std::time::Duration,
    ) -> Self {
        let listener = TcpListener::bind(at).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared {
            upstream,
            fail,
            answer,
            delay,
            requests: Arc::default(),
            failed: Arc::default(),
            busy: Arc::default(),
            most_at_once: Arc::default(),
        };
        let (requests, failed, most_at_once) = (
            shared.requests.clone(),
            shared.failed.clone(),
            shared.most_at_once.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, shared).await;
                });
            }
        });
        Self {
            addr,
            requests,
            failed,
            most_at_once,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An address on 127.0.0.1 where nothing listens (yet).
pub fn closed_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Read one request (head and body) from `conn`; `None` at a clean end of the connection.
async fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok(Some((head, body)))
}

async fn serve(mut conn: TcpStream, shared: Shared) -> std::io::Result<()> {
    let Shared {
        upstream,
        fail,
        answer,
        delay,
        requests,
        failed,
        busy,
        most_at_once,
    } = shared;
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut conn, &mut buf).await? {
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
        most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        busy.fetch_sub(1, Ordering::SeqCst);
        let failing = fail(n, &head);
        match upstream {
            Some(up) if !failing => {
                // Forward with `Connection: close`, copy the answer back, then close.
                let mut lines: Vec<&str> = head
                    .trim_end_matches("\r\n")
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("Connection: close");
                let mut out = lines.join("\r\n").into_bytes();
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(&body);
                let mut up = TcpStream::connect(up).await?;
                up.write_all(&out).await?;
                let mut resp = Vec::new();
                up.read_to_end(&mut resp).await?;
                conn.write_all(&resp).await?;
                conn.shutdown().await?;
                return Ok(());
            }
            _ => {
                failed.fetch_add(1, Ordering::SeqCst);
                let mut out = format!(
                    "HTTP/1.1 {} Canned\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
                    answer.status,
                    answer.body.len()
                );
                for (k, v) in &answer.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&answer.body);
                conn.write_all(out.as_bytes()).await?;
            }
        }
    }
    Ok(())
}
