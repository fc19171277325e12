//! `flow run` of the two HTTP example flows with the real binary: `flows/http-ingest.yaml` fed
//! by a plain HTTP/1.1 client, and `flows/rest-to-file.yaml` polling a small server this test
//! runs itself. Both are stopped with SIGTERM and must exit cleanly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Flow, free_port, lines, wait_for};

/// One HTTP/1.1 request over a fresh connection: the status code and the body. JSON lines go as
/// `application/x-ndjson`, anything else as `application/json`.
fn request(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let content_type = if body.trim_end().contains('\n') {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The JSON lines of a file, parsed.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn http_ingest_flow_appends_what_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = format!("127.0.0.1:{}", free_port());
    let out_dir = dir.path().display().to_string();
    let flow = Flow::start(
        Path::new("flows/http-ingest.yaml"),
        dir.path(),
        "flow",
        &[("LISTEN", addr.as_str()), ("OUT_DIR", out_dir.as_str())],
    );
    wait_for(30, "the health endpoint", || {
        request(&addr, "GET", "/health", "").is_some_and(|(c, _)| c == 200)
    });
    let post = |body: &str| request(&addr, "POST", "/ingest", body).expect("answered");
    assert_eq!(post(r#"{"n":1,"status":"ok"}"#).0, 202);
    assert_eq!(
        post(r#"[{"n":2,"status":"error"},{"n":3,"status":"ok"}]"#),
        (202, r#"{"accepted":2}"#.to_owned())
    );
    assert_eq!(post("{\"n\":4}\n{\"n\":5,\"status\":\"error\"}\n").0, 202);
    let (code, msg) = post("{\"n\":6}\n{nope\n");
    assert_eq!(code, 400);
    assert!(msg.contains("line 2"), "{msg}");
    assert_eq!(
        request(&addr, "POST", "/elsewhere", "{}").map(|r| r.0),
        Some(404)
    );
    flow.stop_cleanly();
    let got: Vec<i64> = json_lines(&dir.path().join("ingest.jsonl"))
        .iter()
        .map(|v| v["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(got, [1, 3, 4]);
}

/// A REST endpoint answering `GET` with whatever `body` holds, counting requests.
fn rest_server(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let b = body.lock().expect("lock").clone();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{b}",
                b.len()
            );
        }
    });
    addr
}

#[test]
fn rest_to_file_flow_writes_each_id_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let body = Arc::new(Mutex::new(
        r#"[{"id":1,"v":"a"},{"id":2,"v":"b"}]"#.to_owned(),
    ));
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = rest_server(body.clone(), hits.clone());
    let url = format!("http://{addr}/items");
    let out_dir = dir.path().display().to_string();
    let flow = Flow::start(
        Path::new("flows/rest-to-file.yaml"),
        dir.path(),
        "flow",
        &[
            ("REST_URL", url.as_str()),
            ("POLL_INTERVAL", "50ms"),
            ("OUT_DIR", out_dir.as_str()),
        ],
    );
    let out = dir.path().join("items.jsonl");
    wait_for(30, "the first two items", || lines(&out) >= 2);
    *body.lock().expect("lock") = r#"[{"id":2,"v":"b"},{"id":3,"v":"c"}]"#.to_owned();
    wait_for(30, "the third item", || lines(&out) >= 3);
    let seen = hits.load(Ordering::SeqCst);
    wait_for(30, "three more polls", || {
        hits.load(Ordering::SeqCst) >= seen + 3
    });
    flow.stop_cleanly();
    let got: Vec<(i64, String)> = json_lines(&out)
        .iter()
        .map(|v| {
            (
                v["id"].as_i64().expect("id"),
                v["v"].as_str().expect("v").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "a".to_owned()),
            (2, "b".to_owned()),
            (3, "c".to_owned())
        ]
    );
}
