//! Secrets never leave the process: every example flow in `flows/` runs at `-vvv` with a planted,
//! unique value in every option that holds a secret (MQTT passwords, tokens, HTTP headers,
//! Kafka `properties`, S3 keys, the API token), and none of them may appear in stderr, the
//! `--report`, the control API (`/api/v1/flow`, `/stats`, `/events`), or any file the run wrote
//! (outputs, where a `failure` port's error attributes land, and the provenance store).
//!
//! The servers are unreachable on purpose (a closed port each): connection errors, retries and
//! failed records are where a secret most easily slips into a message. No server needed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, repo};

/// The options of each processor type that hold secrets, as YAML lines under the processor
/// (`{S}` is replaced by a `${VAR}` whose value is a planted secret). The schema marks them
/// secret (`writeOnly`): checked by `the_planted_options_are_the_schemas_secrets`.
fn secret_options(type_name: &str) -> &'static [(&'static str, &'static str)] {
    match type_name {
        "mqtt_source" | "mqtt_sink" => &[("username", "planted-user"), ("password", "{S}")],
        "influxdb_sink" | "http_server" => &[("token", "{S}")],
        "http_poll" => &[("headers", "\n  Authorization: Bearer {S}\n  X-Api-Key: {S}")],
        "kafka_source" | "kafka_sink" => &[(
            "properties",
            "\n  security.protocol: sasl_plaintext\n  sasl.mechanism: PLAIN\n  \
             sasl.username: planted-user\n  sasl.password: {S}",
        )],
        "s3_sink" => &[
            ("access_key_id", "AKIAPLANTED"),
            ("secret_access_key", "{S}"),
        ],
        _ => &[],
    }
}

/// The flow file with the secret options planted in every processor (an option already there
/// is replaced), and the planted values by their variable.
fn plant(yaml: &str, flow: &str) -> (String, Vec<(String, String)>) {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut secrets = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push(line.to_owned());
        i += 1;
        let trimmed = line.trim_start();
        let Some(type_name) = trimmed.strip_prefix("type: ") else {
            continue;
        };
        let options = secret_options(type_name.trim());
        if options.is_empty() {
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        // The rest of this processor's block, without the options planted below.
        while i < lines.len() {
            let l = lines[i];
            let t = l.trim_start();
            let depth = l.len() - t.len();
            if !t.is_empty() && depth < indent.len() {
                break;
            }
            if let Some((key, _)) = t.split_once(':')
                && depth == indent.len()
                && options.iter().any(|(k, _)| *k == key)
            {
                // Skip the option and its nested lines.
                i += 1;
                while i < lines.len() {
                    let n = lines[i];
                    if n.trim().is_empty() || n.len() - n.trim_start().len() > indent.len() {
                        i += 1;
                    } else {
                        break;
                    }
                }
                continue;
            }
            out.push(l.to_owned());
            i += 1;
        }
        for (key, value) in options {
            let mut v = (*value).to_owned();
            while v.contains("{S}") {
                let var = format!("PLANTED_SECRET_{}", secrets.len());
                let secret = format!(
                    "pl4nted{}x{}q9",
                    flow.replace(['-', '.'], ""),
                    secrets.len()
                );
                v = v.replacen("{S}", &format!("${{{var}}}"), 1);
                secrets.push((var, secret));
            }
            let v = v.replace('\n', &format!("\n{indent}"));
            let sep = if v.starts_with('\n') { "" } else { " " };
            out.push(format!("{indent}{key}:{sep}{v}"));
        }
    }
    (out.join("\n") + "\n", secrets)
}

/// A plain HTTP GET with a bearer token: the status and the body (`None`: no answer).
fn get(addr: &str, path: &str, token: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, into);
        } else {
            into.push(p);
        }
    }
}

/// Example flows (not their tests), sorted.
fn example_flows() -> Vec<PathBuf> {
    let mut flows: Vec<PathBuf> = std::fs::read_dir(repo().join("flows"))
        .expect("flows/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".test.yaml")
        })
        .collect();
    flows.sort();
    flows
}

#[test]
fn no_planted_secret_leaves_any_example_flow() {
    let flows = example_flows();
    assert!(flows.len() >= 10, "the example flows: {flows:?}");
    let mut planted_total = 0;
    let mut ran = 0;
    let mut leaks: Vec<String> = Vec::new();
    for file in &flows {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a name")
            .to_owned();
        let dir = tempfile::tempdir().expect("tmp");
        let yaml = std::fs::read_to_string(file).expect("flow");
        let (planted, mut secrets) = plant(&yaml, &name);
        let flow_file = dir.path().join("flow.yaml");
        std::fs::write(&flow_file, &planted).expect("written");
        let api_token = format!("pl4nted{}xapitoken", name.replace('-', ""));
        let input = dir.path().join("input.jsonl");
        let mut events = String::new();
        for i in 0..200 {
            events.push_str(&format!(
                "{{\"device\":\"d{}\",\"ts\":\"2026-01-01T00:00:{:02}Z\",\"temperature\":{},\
                 \"rpm\":{},\"status\":\"{}\"}}\n",
                i % 4,
                i % 60,
                60 + i % 50,
                1000 + i,
                if i % 7 == 0 { "error" } else { "ok" }
            ));
        }
        events.push_str("not json\n");
        std::fs::write(&input, events).expect("input");
        let dead = free_port();
        let api = format!("127.0.0.1:{}", free_port());
        let out_dir = dir.path().join("out");
        let state = dir.path().join("state");
        let report = dir.path().join("report.json");
        let log = dir.path().join("stderr.log");
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        c.current_dir(repo())
            .env("XDG_STATE_HOME", &state)
            .env("OUT_DIR", &out_dir)
            .env("INPUT", &input)
            .env("MQTT_URL", format!("mqtt://127.0.0.1:{dead}"))
            .env("KAFKA_BROKERS", format!("127.0.0.1:{dead}"))
            .env("INFLUX_URL", format!("http://127.0.0.1:{dead}"))
            .env("REST_URL", format!("http://127.0.0.1:{dead}/readings"))
            .env("S3_URL", "s3://planted-bucket/prefix")
            .env("S3_ENDPOINT", format!("http://127.0.0.1:{dead}"))
            .env("LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("POLL_INTERVAL", "200ms")
            .env("COUNT", "1000000")
            .env("RATE", "2000")
            .env_remove("RUST_LOG")
            .args(["-vvv", "run", "--quiet", "--report"])
            .arg(&report)
            .args(["--api", &api, "--api-token", &api_token])
            .arg(&flow_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        for (var, secret) in &secrets {
            c.env(var, secret);
        }
        let mut child = c.spawn().expect("flow starts");
        // The API's answers while the flow runs (it may also end by itself first).
        let mut answers: Vec<(String, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut flow_info = None;
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            if let Some((200, body)) = get(&api, "/api/v1/flow", &api_token) {
                flow_info = Some(body);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(info) = &flow_info {
            // Let connections fail and records fail for a while, then look again.
            std::thread::sleep(Duration::from_secs(3));
            answers.push(("/api/v1/flow".into(), info.clone()));
            for path in ["/api/v1/stats", "/api/v1/events", "/metrics"] {
                if let Some((_, body)) = get(&api, path, &api_token) {
                    answers.push((path.into(), body));
                }
            }
            // Each planted option is in the flow's config, redacted.
            let v: serde_json::Value = serde_json::from_str(info).expect("flow JSON");
            for node in v["nodes"].as_array().expect("nodes") {
                let type_name = node["type"].as_str().unwrap_or_default();
                for (key, value) in secret_options(type_name) {
                    if value.contains("{S}") {
                        assert_eq!(
                            node["config"][key], "<redacted>",
                            "{name}: `{key}` of `{}` in /api/v1/flow: {info}",
                            node["name"]
                        );
                    }
                }
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("waited");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "{name}: {} secrets planted, exit {status}, {} stderr lines, API {}",
            secrets.len(),
            stderr.lines().count(),
            if flow_info.is_some() {
                "read"
            } else {
                "not up"
            }
        );
        secrets.push(("api token".into(), api_token.clone()));
        planted_total += secrets.len();
        // Every place the run wrote to.
        let mut places: Vec<(String, Vec<u8>)> = vec![("stderr".into(), stderr.into_bytes())];
        places.extend(
            answers
                .into_iter()
                .map(|(p, b)| (format!("API {p}"), b.into_bytes())),
        );
        let mut written = Vec::new();
        files(dir.path(), &mut written);
        for f in written {
            if f == log || f == flow_file {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            places.push((f.display().to_string(), bytes));
        }
        // A flow that could not start (the plugin flows, without `plugins/build.sh`) writes
        // no report; one that ran does.
        assert!(
            flow_info.is_none() || places.iter().any(|(p, _)| p.ends_with("report.json")),
            "{name}: no --report was written"
        );
        ran += usize::from(flow_info.is_some());
        for (var, secret) in &secrets {
            for (place, bytes) in &places {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    let text = String::from_utf8_lossy(bytes);
                    let line = text
                        .lines()
                        .find(|l| l.contains(secret.as_str()))
                        .unwrap_or_default();
                    leaks.push(format!("{name}: {var} in {place}: {line}"));
                }
            }
        }
    }
    eprintln!(
        "{ran} of {} flows ran; {planted_total} secrets planted",
        flows.len()
    );
    assert!(planted_total > flows.len(), "secrets were planted");
    assert!(ran >= 8, "only {ran} flows ran");
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

/// Every option planted above with a secret is one the schema marks secret (`writeOnly`, what
/// `/api/v1/flow` redacts). The other way round, a new `writeOnly` option goes into
/// `secret_options` by hand.
#[test]
fn the_planted_options_are_the_schemas_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .arg("schema")
        .output()
        .expect("flow schema");
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let text = serde_json::to_string(&schema).expect("text");
    // Every `writeOnly` property, as `definition.property`.
    let mut marked: Vec<String> = Vec::new();
    fn walk(v: &serde_json::Value, at: &str, marked: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    for (k, p) in props {
                        if p.get("writeOnly") == Some(&serde_json::Value::Bool(true)) {
                            marked.push(format!("{at}.{k}"));
                        }
                    }
                }
                for (k, x) in m {
                    walk(x, k, marked);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, at, marked)),
            _ => {}
        }
    }
    walk(&schema, "", &mut marked);
    marked.sort();
    marked.dedup();
    assert!(!text.is_empty());
    eprintln!("writeOnly in `flow schema`: {marked:?}");
    for t in [
        "mqtt_source",
        "mqtt_sink",
        "influxdb_sink",
        "http_server",
        "http_poll",
        "kafka_source",
        "kafka_sink",
        "s3_sink",
    ] {
        for (key, value) in secret_options(t) {
            if value.contains("{S}") {
                assert!(
                    marked.iter().any(|m| m.ends_with(&format!(".{key}"))),
                    "`{t}.{key}` holds a secret but the schema does not mark it writeOnly: {marked:?}"
                );
            }
        }
    }
}
