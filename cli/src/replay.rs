//! `flow provenance replay ID`: write the content a node kept of a record (see
//! `provenance.content`) as lines a `file` or `stdin` source reads back as the same records.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use flow_core::provenance::replay::{self, Replayable};
use flow_core::record::RecordId;

#[derive(clap::Args)]
pub struct Args {
    /// The record's id (16 hex digits). Its own kept content is written, or, if it was not
    /// kept, that of the first of its descendants (fork copies, window outputs) that was.
    id: String,
    /// Only the content kept at this processor.
    #[arg(long)]
    node: Option<String>,
    /// Write every kept copy in the record's lineage, not only the first.
    #[arg(long)]
    all: bool,
    /// Write one JSON object per record (`id`, `node`, `attributes`, `content`) instead of the
    /// content alone (a `file` source reads content only: its records' attributes are its
    /// own).
    #[arg(long)]
    with_attributes: bool,
    /// Write here instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Re-inject the record into the flow running with this control API (`flow run
    /// --api`), at the node it entered, instead of writing it out: a new record whose
    /// lineage goes through the original's REPLAY event. Prints the new record's id.
    #[arg(long, value_name = "URL", conflicts_with_all = ["node", "all", "with_attributes", "output"])]
    api: Option<String>,
    /// The API's token (with `--api`).
    #[arg(long, env = "FLOW_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `--api`: ask the running flow to re-inject the record.
fn run_api(args: &Args, url: &str) -> anyhow::Result<ExitCode> {
    let id = args.id.trim().to_owned();
    let client = crate::client::Client::new(Some(url), args.token.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let replayed: crate::api::Replayed = runtime.block_on(async {
        let resp = client
            .post(&format!("/api/v1/provenance/replay/{id}"))
            .await?;
        let bytes = resp.bytes().await.context("reading the answer")?;
        serde_json::from_slice(&bytes).context("not the expected JSON")
    })?;
    println!(
        "replayed {} at {} as {}",
        replayed.original,
        replayed.node,
        replayed.records.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `--api`: re-inject into a running flow (no store to read here), if given.
pub fn run_remote(args: &Args) -> Option<anyhow::Result<ExitCode>> {
    args.api.as_deref().map(|url| run_api(args, url))
}

pub fn run(args: &Args, dir: &Path) -> anyhow::Result<ExitCode> {
    let id = u64::from_str_radix(args.id.trim(), 16)
        .map(RecordId)
        .with_context(|| format!("`{}` is not a record id (16 hex digits)", args.id))?;
    let mut found = replay::find(dir, id, args.node.as_deref())
        .with_context(|| format!("cannot replay from {}", dir.display()))?;
    if !args.all {
        found.truncate(1);
    }
    let mut out = String::new();
    for r in &found {
        out.push_str(&render(r, args.with_attributes)?);
        out.push('\n');
    }
    match &args.output {
        Some(file) => {
            std::fs::write(file, out).with_context(|| format!("cannot write {}", file.display()))?
        }
        None => std::io::stdout()
            .write_all(out.as_bytes())
            .context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &Replayable, with_attributes: bool) -> anyhow::Result<String> {
    if with_attributes {
        return Ok(serde_json::to_string(r)?);
    }
    Ok(replay::line(r)?)
}
