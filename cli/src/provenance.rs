//! `flow provenance`: what happened to a record, from a flow's provenance store; and opening
//! the store for `flow run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use flow_core::provenance::EventKind;
use flow_core::provenance::config::ProvenanceConfig;
use flow_core::provenance::query::{Events, Found, Search, Stats, format_time};
use flow_core::provenance::store::Writer;
use flow_core::record::RecordId;
use flow_core::spec::{self, FlowSpec};

#[derive(clap::Args)]
pub struct Args {
    /// The flow file whose store to read (its `provenance.path`, or the default directory
    /// for its name).
    #[arg(long, short = 'f', value_name = "FILE", global = true)]
    flow: Option<PathBuf>,
    /// The store's directory (instead of `--flow`).
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
    /// `table` (for people) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Query,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Query {
    /// The tree of a record: from the record its source created, through every fork, to
    /// every sink that got a copy, with times and destinations.
    Lineage {
        /// The record's id (16 hex digits, as `search` and `flow tap` show it).
        id: String,
    },
    /// Events, oldest first.
    Search {
        /// Only at this node.
        #[arg(long)]
        node: Option<String>,
        /// Only at this port.
        #[arg(long)]
        port: Option<String>,
        /// Only of this kind: CREATE, RECEIVE, ROUTE, FORK, DROP, FAILURE, SEND, JOIN, MODIFY, CONTENT,
        /// REPLAY.
        #[arg(long)]
        event: Option<String>,
        /// Only at or after this time: RFC 3339 (`2026-12-03T01:00:00Z`), or a time ago
        /// (`10m`, `1h 30m`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only at or before this time (as `--since`).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only records that carried this attribute: `NAME=VALUE` (secret attributes are
        /// never stored, so never found).
        #[arg(long, value_name = "NAME=VALUE")]
        attr: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The store's size, its events by kind and by node, its time range.
    Stats,
    /// Write a record's kept content (see `provenance.content`) as lines a `file` or `stdin`
    /// source reads back as the same records.
    Replay(crate::replay::Args),
}

/// Open the provenance store of `flow` for a run, unless its file turns it off.
pub fn open(flow: &FlowSpec) -> anyhow::Result<Option<Writer>> {
    let config = flow.provenance.clone().unwrap_or_default();
    if !config.is_enabled() {
        return Ok(None);
    }
    let settings = config.settings(&flow.name);
    let header = flow_core::runtime::provenance_header(flow);
    let writer = Writer::open(&settings, header)
        .with_context(|| {
            format!(
                "cannot open the provenance store {}",
                settings.dir.display()
            )
        })?
        .when_full(config.when_full.unwrap_or_default());
    tracing::debug!(store = %settings.dir.display(), "recording provenance");
    Ok(Some(writer))
}

/// Close the store once the flow has ended (the writer writes what is left).
pub fn close(store: Writer) -> anyhow::Result<()> {
    let stats = store.close().context("the provenance store")?;
    tracing::debug!(
        events = stats.events,
        bytes = stats.bytes,
        "provenance written"
    );
    Ok(())
}

fn store_dir(args: &Args, registry: &flow_core::processor::Registry) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.store {
        return Ok(dir.clone());
    }
    let Some(file) = &args.flow else {
        anyhow::bail!("give the flow (`--flow FILE`) or the store (`--store DIR`)");
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // The structure is enough: unset `${VAR}`s stay as written.
    let loaded = spec::load_structure(&text, &|k| std::env::var(k).ok(), registry);
    let Some(flow) = loaded.flow else {
        anyhow::bail!(
            "{} is not a valid flow (`flow validate` says why)",
            file.display()
        );
    };
    let config: ProvenanceConfig = flow.provenance.clone().unwrap_or_default();
    Ok(config.settings(&flow.name).dir)
}

pub fn run(args: Args, registry: &flow_core::processor::Registry) -> anyhow::Result<ExitCode> {
    if let Query::Replay(r) = &args.command
        && let Some(done) = crate::replay::run_remote(r)
    {
        return done;
    }
    let dir = store_dir(&args, registry)?;
    if !dir.is_dir() {
        anyhow::bail!("no provenance store at {}", dir.display());
    }
    // (Reads only the segments' headers and indexes: cheap for `replay` too.)
    let events = Events::read(&dir)?;
    let json = matches!(args.format, Format::Json);
    let out = match &args.command {
        Query::Lineage { id } => {
            let id = parse_id(id)?;
            let Some(tree) = events.lineage(id)? else {
                eprintln!("no event names record {id} in {}", dir.display());
                return Ok(ExitCode::from(1));
            };
            if json {
                serde_json::to_string_pretty(&tree)? + "\n"
            } else {
                tree.render()
            }
        }
        Query::Search {
            node,
            port,
            event,
            since,
            until,
            attr,
            limit,
        } => {
            let now = flow_core::provenance::now_ms();
            let q = search(
                SearchText {
                    node: node.clone(),
                    port: port.clone(),
                    event: event.clone(),
                    since: since.clone(),
                    until: until.clone(),
                    attr: attr.clone(),
                    limit: Some(*limit),
                },
                now,
            )?;
            let found = events.search(&q)?;
            if json {
                serde_json::to_string_pretty(&found)? + "\n"
            } else {
                search_table(&found)
            }
        }
        Query::Replay(r) => return crate::replay::run(r, &dir),
        Query::Stats => {
            let s = events.stats();
            if json {
                serde_json::to_string_pretty(&s)? + "\n"
            } else {
                stats_table(&dir, &s)
            }
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// A search as given, as text (on the command line, or the API's query string).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchText {
    /// Only at this node.
    pub node: Option<String>,
    /// Only at this port.
    pub port: Option<String>,
    /// Only of this kind.
    pub event: Option<String>,
    /// Only at or after this time (see [`parse_time`]).
    pub since: Option<String>,
    /// Only at or before this time.
    pub until: Option<String>,
    /// Only records with this attribute: `NAME=VALUE`.
    pub attr: Option<String>,
    /// At most this many (100 if not given).
    pub limit: Option<usize>,
}

/// A search from its parts as given; relative times count back from `now` (epoch ms).
pub fn search(t: SearchText, now: i64) -> anyhow::Result<Search> {
    let kind = match t.event.as_deref() {
        Some(e) => Some(EventKind::parse(e).with_context(|| {
            let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
            format!("no event kind `{e}`: {}", kinds.join(", "))
        })?),
        None => None,
    };
    let attr = match t.attr.as_deref() {
        Some(a) => match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
            _ => anyhow::bail!("invalid attribute `{a}`: give NAME=VALUE"),
        },
        None => None,
    };
    Ok(Search {
        node: t.node,
        port: t.port,
        kind,
        since: t.since.map(|s| parse_time(&s, now)).transpose()?,
        until: t.until.map(|s| parse_time(&s, now)).transpose()?,
        attr,
        limit: t.limit.unwrap_or(100),
    })
}

/// A time as epoch ms: RFC 3339 in UTC (`2026-12-03T01:00:00Z`, `2026-12-03 01:00:00`), a
/// duration before `now` (`10m`, `1h 30m`), or epoch milliseconds.
pub fn parse_time(text: &str, now: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(ago));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(t) => Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        Err(e) => anyhow::bail!(
            "invalid time `{text}`: {e}; give RFC 3339 in UTC (2026-12-03T01:00:00Z), a time \
             ago (10m, 2h) or epoch milliseconds"
        ),
    }
}

fn search_table(found: &[Found]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<8} {:<24} {:>7} {:<16} {}\n",
        "EVENT", "TIME", "KIND", "NODE.PORT", "RECORDS", "FIRST", "DETAIL"
    );
    for e in found {
        let at = match &e.port {
            Some(p) => format!("{}.{p}", e.node),
            None => e.node.clone(),
        };
        out.push_str(&format!(
            "{:<20} {:<12} {:<8} {:<24} {:>7} {:<16} {}\n",
            format!("{:x}", e.event),
            format_time(e.time),
            e.kind.name(),
            at,
            e.records,
            e.first,
            e.detail.as_deref().unwrap_or("")
        ));
    }
    out
}

fn stats_table(dir: &std::path::Path, s: &Stats) -> String {
    let mut out = String::new();
    out.push_str(&format!("store      {}\n", dir.display()));
    out.push_str(&format!("flows      {}\n", s.flows.join(", ")));
    out.push_str(&format!("segments   {}\n", s.segments));
    out.push_str(&format!(
        "bytes      {} (index {})\n",
        s.bytes, s.index_bytes
    ));
    out.push_str(&format!("events     {}\n", s.events));
    out.push_str(&format!("created    {} records\n", s.records_created));
    if s.records_created > 0 {
        out.push_str(&format!(
            "per record {:.1} bytes\n",
            s.bytes as f64 / s.records_created as f64
        ));
    }
    for (k, n) in &s.by_kind {
        out.push_str(&format!("  {k:<10} {n}\n"));
    }
    for (k, n) in &s.by_node {
        out.push_str(&format!("  node {k:<20} {n}\n"));
    }
    out
}

pub fn parse_id(id: &str) -> anyhow::Result<RecordId> {
    u64::from_str_radix(id.trim(), 16)
        .map(RecordId)
        .with_context(|| format!("`{id}` is not a record id (16 hex digits)"))
}
