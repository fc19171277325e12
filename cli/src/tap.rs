//! `flow tap [URL] NODE[.PORT]`: print copies of the records leaving a port of a running
//! flow, one JSON line each (like `vector tap`). A tap never slows the flow: when this reads
//! too slowly, copies are lost, and it says how many on stderr.

use std::io::Write as _;

use anyhow::Context as _;
use clap::ValueEnum;
use flow_core::observe::TapMessage;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// `[URL] NODE[.PORT]`: the flow's API (default http://127.0.0.1:9420) and the port to
    /// tap (the node's default port when none is named).
    #[arg(required = true, num_args = 1..=2, value_name = "[URL] NODE[.PORT]")]
    target: Vec<String>,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    limit: Option<u64>,
    /// `json`: the record with its id, attributes and event time; `content`: its content only.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// The API's token.
    #[arg(long, env = "FLOW_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Content,
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let (url, target) = match args.target.as_slice() {
        [t] => (None, t.as_str()),
        [u, t] => (Some(u.as_str()), t.as_str()),
        _ => anyhow::bail!("give [URL] NODE[.PORT]"),
    };
    let (node, port) = match target.split_once('.') {
        Some((n, p)) => (n, Some(p)),
        None => (target, None),
    };
    let client = Client::new(url, args.token)?;
    let mut query = format!("/api/v1/tap?format=ndjson&node={}", encode(node));
    if let Some(p) = port {
        query.push_str(&format!("&port={}", encode(p)));
    }
    if let Some(l) = args.limit {
        query.push_str(&format!("&limit={l}"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let mut resp = client.get(&query).await?;
        let mut buf: Vec<u8> = Vec::new();
        let stdout = std::io::stdout();
        while let Some(chunk) = resp.chunk().await.context("reading the tap")? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let m: TapMessage = serde_json::from_slice(&line).with_context(|| {
                    format!("not a tap message: {}", String::from_utf8_lossy(&line))
                })?;
                match m {
                    TapMessage::Lost { lost } => {
                        eprintln!("flow tap: {lost} record(s) lost: reading too slowly");
                    }
                    TapMessage::Record(r) => {
                        let text = match args.format {
                            Format::Json => serde_json::to_string(&r)?,
                            Format::Content => serde_json::to_string(&r.content)?,
                        };
                        let mut out = stdout.lock();
                        // A closed stdout (`| head`) ends the tap quietly.
                        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Percent-encode a query value (node and port names are `[A-Za-z0-9_-]`; anything else is
/// encoded).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
