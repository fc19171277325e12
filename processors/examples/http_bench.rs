//! The two halves of `bench/http.sh`:
//!
//! - `http_bench ceiling ADDR`: the ceiling, a minimal axum server whose `POST /ingest` reads
//!   the body and discards it (`202`), with `GET /health`;
//! - `http_bench load URL CLIENTS REQUESTS EVENTS`: CLIENTS concurrent clients POST REQUESTS
//!   NDJSON bodies of EVENTS events each (every 100th event has `"status":"error"`) over
//!   keep-alive connections; a `429` is retried after 10 ms. Prints one JSON line: accepted
//!   events/s and the p50/p99 latency of accepted requests, each from its first attempt to its
//!   final `2xx` (the `429` answers and the waits before retrying included).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::{get, post};

fn usage() -> ! {
    eprintln!("usage: http_bench ceiling ADDR | http_bench load URL CLIENTS REQUESTS EVENTS");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ceiling") if args.len() == 2 => ceiling(&args[1]).await,
        Some("load") if args.len() == 5 => {
            let num = |i: usize| args[i].parse::<usize>().unwrap_or_else(|_| usage());
            load(&args[1], num(2), num(3), num(4)).await;
        }
        _ => usage(),
    }
}

async fn ceiling(addr: &str) {
    async fn discard(body: Body) -> StatusCode {
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(_) => StatusCode::ACCEPTED,
            Err(_) => StatusCode::BAD_REQUEST,
        }
    }
    let app = Router::new()
        .route("/ingest", post(discard))
        .route("/health", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    axum::serve(listener, app).await.expect("serve");
}

async fn load(url: &str, clients: usize, requests: usize, events: usize) {
    // Plain HTTP, but the client still wants a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let mut body = String::new();
    for i in 0..events {
        let status = if i % 100 == 99 { "error" } else { "ok" };
        body.push_str(&format!(
            "{{\"device\":\"dev-{}\",\"n\":{i},\"status\":\"{status}\",\"temperature\":71.5,\"rpm\":2400}}\n",
            i % 50
        ));
    }
    let body = bytes::Bytes::from(body);
    let next = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        let (next, rejected) = (next.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                // From the first attempt: time refused (429/503) and waiting counts.
                let t = Instant::now();
                loop {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("request");
                    let status = r.status();
                    let _ = r.bytes().await;
                    if status.as_u16() == 429 || status.as_u16() == 503 {
                        rejected.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    assert!(status.is_success(), "HTTP {status}");
                    latencies.push(t.elapsed());
                    break;
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let total = (all.len() * events) as f64;
    println!(
        "{{\"requests\":{},\"events\":{},\"secs\":{secs:.3},\"events_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"rejected\":{}}}",
        all.len(),
        total,
        total / secs,
        pct(0.50),
        pct(0.99),
        rejected.load(Ordering::Relaxed)
    );
}
