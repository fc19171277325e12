//! `flow`: run, validate, draw and describe flows.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use flow_core::processor::Kind;
use flow_core::runtime::CancellationToken;
use flow_core::runtime::RunReport;
use flow_core::spec::{self, Severity};

#[cfg(feature = "mimalloc")]
mod alloc;
mod api;
mod client;
mod docs;
mod plugin;
mod progress;
mod provenance;
mod replay;
mod tap;
mod test_cmd;
mod top;

/// flow: dataflows from YAML. Processors connected by named ports, back-pressure on every edge,
/// records acknowledged end to end.
#[derive(Parser)]
#[command(name = "flow", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a flow until its sources end or it is interrupted (Ctrl-C / SIGTERM).
    Run {
        /// The flow file.
        file: PathBuf,
        /// No progress line and no summary.
        #[arg(short, long)]
        quiet: bool,
        /// Write the run report (per-node and per-edge counters) as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Serve the control API (/metrics, /api/v1/...) on ADDR (default 127.0.0.1:9420;
        /// `127.0.0.1:0` picks a free port). The bound address is printed on stderr.
        #[arg(long, value_name = "ADDR", num_args = 0..=1)]
        api: Option<Option<String>>,
        /// The token the control API requires (`Authorization: Bearer TOKEN`); required to
        /// listen on anything but a loopback address.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "FLOW_API_TOKEN",
            hide_env_values = true
        )]
        api_token: Option<String>,
        /// Record no provenance for this run (see `provenance:` in the flow file).
        #[arg(long)]
        no_provenance: bool,
    },
    /// Watch a running flow (`flow run --api`): per-node rates and per-edge queues, live.
    Top(top::Args),
    /// Print copies of the records leaving a port of a running flow, as JSON lines.
    Tap(tap::Args),
    /// Query a flow's provenance store: a record's lineage, events, stats.
    Provenance(provenance::Args),
    /// Check flow files without running them: every error, with file:line:column.
    Validate {
        /// Flow files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output: `pretty` (with the offending line), `short` (one line each) or `json`.
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// Run the unit tests of flows (`NAME.test.yaml` files; docs/testing.md): records in at
    /// a node, expectations on ports, a virtual clock, no servers. Exit 1 if any test fails.
    Test {
        /// Test files, flow files (their `NAME.test.yaml` beside them) or folders (searched
        /// for `*.test.yaml`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `pretty` (pass/fail and what differs) or `junit` (XML on stdout, for CI).
        #[arg(long, value_enum, default_value_t = test_cmd::TestFormat::Pretty)]
        format: test_cmd::TestFormat,
        /// Run only the tests whose name contains this.
        #[arg(long, value_name = "NAME")]
        filter: Option<String>,
        /// Report a test as hung after this many seconds of real time.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
    },
    /// Draw a flow.
    Graph {
        /// The flow file.
        file: PathBuf,
        /// `dot` (Graphviz) or `mermaid`.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// List every processor type with its one-line description.
    Processors,
    /// Print the JSON Schema of flow files (for editor autocompletion).
    Schema,
    /// Make a plugin crate, or show what a plugin declares.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Write the processor reference (Markdown, from the config doc comments) into DIR.
    Docs {
        /// Where to write, usually `docs/reference`.
        dir: PathBuf,
        /// Write nothing; exit 1 if DIR is not current.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Short,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Exit codes: 0 fine, 1 invalid flow or failed run, 2 usage (clap uses 2 as well).
const INVALID: u8 = 1;
const USAGE: u8 = 2;

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    alloc::tune();
    let cli = Cli::parse();
    let events = api::events::EventLog::new(1000);
    // Tests send records to `failure` on purpose: only errors are logged unless asked.
    let quiet = matches!(cli.command, Command::Test { .. });
    init_logging(cli.verbose, quiet, events.clone());
    match dispatch(cli.command, events) {
        Ok(code) => code,
        // `flow schema | head`: the reader has what it wanted.
        Err(e)
            if e.is::<StdoutClosed>()
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(USAGE)
        }
    }
}

/// The reader of stdout went away (`flow processors | head -1`). Like ripgrep, the command
/// stops quietly and exits 0: the reader chose to stop, and a 141 would fail every
/// `set -o pipefail` script that only wanted the first lines.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Write to stdout (`print!` panics when the reader has gone).
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Write to stderr; if it is closed there is nowhere to say so (`eprint!` would panic).
fn print_err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn init_logging(verbose: u8, quiet: bool, events: std::sync::Arc<api::events::EventLog>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::LevelFilter};
    // rustls's platform verifier logs every refused certificate as an error of its own; the
    // processor's warning (burst-limited, with the node and URL) already carries its reason.
    let default = match verbose {
        0 if quiet => "error",
        0 => "warn,rustls_platform_verifier=off",
        1 => "info,rustls_platform_verifier=off",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // Warnings and errors also go to the API's events, whatever the log level.
    let bulletins = api::events::EventLayer(events).with_filter(LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(log)
        .with(bulletins)
        .init();
}

fn dispatch(
    command: Command,
    events: std::sync::Arc<api::events::EventLog>,
) -> anyhow::Result<ExitCode> {
    let registry = flow_processors::builtin();
    match command {
        Command::Processors => {
            let width = registry
                .all()
                .iter()
                .map(|d| d.type_name.len())
                .max()
                .unwrap_or(0);
            let mut list = String::new();
            for d in registry.all() {
                list.push_str(&format!(
                    "{:width$}  {:9}  {}\n",
                    d.type_name,
                    d.kind.to_string(),
                    d.summary()
                ));
            }
            print_out(&list)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            let schema = spec::json_schema(&registry);
            print_out(&format!("{}\n", serde_json::to_string_pretty(&schema)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Docs { dir, check } => Ok(if docs::write_or_check(&registry, &dir, check)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(INVALID)
        }),
        Command::Validate { files, format } => validate(&files, format, &registry),
        Command::Plugin { command } => plugin::run(command).map(|()| ExitCode::SUCCESS),
        Command::Test {
            paths,
            format,
            filter,
            timeout,
        } => test_cmd::run(
            &paths,
            format,
            filter.as_deref(),
            Duration::from_secs(timeout),
            &registry,
        ),
        Command::Graph { file, format } => {
            let text = read(&file)?;
            // Drawing needs the structure only: unset `${VAR}`s are fine (`flow run` needs them).
            let loaded = spec::load_structure(&text, &|k| std::env::var(k).ok(), &registry);
            let Some(flow) = loaded.flow else {
                print_diagnostics(&file, &text, &loaded.diagnostics, Format::Pretty)?;
                return Ok(ExitCode::from(INVALID));
            };
            let out = match format {
                GraphFormat::Dot => flow_core::graph::to_dot(&flow),
                GraphFormat::Mermaid => flow_core::graph::to_mermaid(&flow),
            };
            print_out(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            file,
            quiet,
            report,
            api,
            api_token,
            no_provenance,
        } => {
            let api = api.as_ref().map(|a| a.as_deref());
            let observe = Observe {
                api,
                api_token: api_token.as_deref(),
                events,
                provenance: !no_provenance,
            };
            run(&file, quiet, report.as_deref(), &registry, observe)
        }
        Command::Top(args) => top::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Provenance(args) => provenance::run(args, &registry),
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn print_diagnostics(
    file: &Path,
    text: &str,
    diags: &[spec::Diagnostic],
    format: Format,
) -> anyhow::Result<()> {
    let name = file.display().to_string();
    match format {
        Format::Pretty => print_err(&spec::render(&name, text, diags)),
        Format::Short => print_err(&spec::render_short(&name, diags)),
        Format::Json => {
            let mut lines = String::new();
            for d in diags {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("file".into(), name.clone().into());
                }
                lines.push_str(&format!("{v}\n"));
            }
            print_out(&lines)?;
        }
    }
    Ok(())
}

/// Whether stdout still has a reader after a print.
fn still_open(printed: anyhow::Result<()>) -> anyhow::Result<bool> {
    match printed {
        Ok(()) => Ok(true),
        Err(e) if e.is::<StdoutClosed>() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A file that cannot be read, reported like a finding so the other files are still checked.
fn print_unreadable(file: &Path, error: &std::io::Error, format: Format) -> anyhow::Result<()> {
    let name = file.display().to_string();
    match format {
        Format::Pretty | Format::Short => {
            print_err(&format!("{name}: error: cannot read: {error}\n"));
            Ok(())
        }
        Format::Json => {
            let v = serde_json::json!({
                "severity": "error",
                "message": format!("cannot read: {error}"),
                "line": 0,
                "column": 0,
                "file": name,
            });
            print_out(&format!("{v}\n"))
        }
    }
}

/// Check every file, even after one that is invalid or cannot be read; exit 1 if any is
/// (also when the reader of the JSON findings stopped reading).
fn validate(
    files: &[PathBuf],
    format: Format,
    registry: &flow_core::processor::Registry,
) -> anyhow::Result<ExitCode> {
    let mut invalid = 0;
    let mut stdout_open = true;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                if stdout_open {
                    stdout_open = still_open(print_unreadable(file, &e, format))?;
                }
                invalid += 1;
                continue;
            }
        };
        let loaded = spec::load_with_env(&text, registry);
        if stdout_open {
            stdout_open = still_open(print_diagnostics(file, &text, &loaded.diagnostics, format))?;
        }
        let errors = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        if errors > 0 {
            invalid += 1;
        }
        if !matches!(format, Format::Json) {
            let warnings = loaded.diagnostics.len() - errors;
            if errors == 0 {
                let w = if warnings > 0 {
                    format!(" ({warnings} warning(s))")
                } else {
                    String::new()
                };
                print_err(&format!("{}: ok{w}\n", file.display()));
            } else {
                print_err(&format!("{}: {errors} error(s)\n", file.display()));
            }
        }
    }
    Ok(if invalid > 0 {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `flow run` serves to watchers.
struct Observe<'a> {
    /// `--api [ADDR]`.
    api: Option<Option<&'a str>>,
    /// `--api-token`.
    api_token: Option<&'a str>,
    /// Recent warnings and errors.
    events: std::sync::Arc<api::events::EventLog>,
    /// Record provenance (unless `--no-provenance` or `provenance.enabled: false`).
    provenance: bool,
}

fn run(
    file: &Path,
    quiet: bool,
    report_path: Option<&Path>,
    registry: &flow_core::processor::Registry,
    observe: Observe,
) -> anyhow::Result<ExitCode> {
    let started = std::time::SystemTime::now();
    let text = read(file)?;
    let loaded = spec::load_with_env(&text, registry);
    if !loaded.diagnostics.is_empty() {
        print_diagnostics(file, &text, &loaded.diagnostics, Format::Pretty)?;
    }
    let Some(flow) = loaded.flow else {
        return Ok(ExitCode::from(INVALID));
    };
    let api = api::Settings::resolve(observe.api, observe.api_token, flow.api.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flow-worker")
        .build()
        .context("cannot start the runtime")?;
    let interactive = !quiet && std::io::stderr().is_terminal();
    let report = runtime.block_on(async {
        // Signals are listened for before anything slow starts (the API, the provenance store,
        // the processors): a stop asked for while the flow is starting stops it gracefully
        // once started, instead of ending the process by the signal's default action.
        let shutdown = CancellationToken::new();
        let forced = Arc::new(std::sync::OnceLock::<ForcedExit>::new());
        match Signals::listen() {
            Ok(signals) => {
                tokio::spawn(handle_signals(signals, shutdown.clone(), forced.clone()));
            }
            Err(e) => tracing::warn!("cannot listen for signals: {e}"),
        }
        let bound = match api {
            Some(settings) => Some(api::bind(settings).await?),
            None => None,
        };
        let store = if observe.provenance {
            provenance::open(&flow)?
        } else {
            None
        };
        let recorder = store.as_ref().map(|s| s.recorder().clone());
        let started_flow = flow_core::runtime::start_with(
            &flow,
            shutdown.clone(),
            flow_core::clock::Clock::system(),
            recorder.as_ref(),
        );
        drop(recorder);
        let running = match started_flow {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(None);
            }
        };
        let serving = bound.map(|b| {
            b.serve(
                &flow,
                registry,
                running.reporter(),
                observe.events.clone(),
                started,
                store.as_ref().map(|s| api::Provenance {
                    dir: s.dir().to_owned(),
                    backlog: s.recorder().backlog().clone(),
                }),
            )
        });
        let _ = forced.set(ForcedExit {
            reporter: running.reporter(),
            report: report_path.map(Path::to_path_buf),
        });
        let progress =
            interactive.then(|| tokio::spawn(progress::show(progress::Handles::of(&running))));
        let report = running.wait().await;
        if let Some(p) = progress {
            p.abort();
            eprint!("\r\x1b[2K");
        }
        if let Some(s) = serving {
            // Streams send their last snapshot (equal to the report) and end.
            s.finish(Duration::from_secs(2)).await;
        }
        if let Some(store) = store {
            // Every task has ended: the writer writes what is left and stops.
            tokio::task::spawn_blocking(move || provenance::close(store))
                .await
                .context("the provenance writer")??;
        }
        anyhow::Ok(Some(report))
    })?;
    let Some(report) = report else {
        return Ok(ExitCode::from(INVALID));
    };
    if let Some(path) = report_path {
        write_report(path, &report)?;
    }
    if interactive {
        print_summary(&report, &flow);
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

fn write_report(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// What a forced exit still does: write `--report` from the live counters.
struct ForcedExit {
    reporter: flow_core::runtime::Reporter,
    report: Option<PathBuf>,
}

impl ForcedExit {
    fn write_report(&self) {
        let Some(path) = &self.report else { return };
        let report = self.reporter.report(vec![
            "forced exit (second signal) before the flow had stopped: records in flight were \
             not finished, and the counters are as they were then"
                .into(),
        ]);
        if let Err(e) = write_report(path, &report) {
            eprintln!("error: {e:#}");
        }
    }
}

/// First SIGINT/SIGTERM: graceful stop. Second: write `--report` (once the flow has started)
/// and exit now.
async fn handle_signals(
    mut signals: Signals,
    shutdown: CancellationToken,
    forced: Arc<std::sync::OnceLock<ForcedExit>>,
) {
    let mut count = 0;
    loop {
        signals.next().await;
        count += 1;
        if count == 1 {
            tracing::warn!(
                "stopping: sources stop, queues drain, sinks flush (signal again to force)"
            );
            shutdown.cancel();
        } else {
            eprintln!("forced exit");
            if let Some(f) = forced.get() {
                f.write_report();
            }
            std::process::exit(130);
        }
    }
}

/// The stop signals, listened for from creation on.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_summary(report: &RunReport, flow: &flow_core::spec::FlowSpec) {
    let name_w = top::column_width(flow.nodes.iter().map(|n| n.name.len()));
    eprintln!(
        "{:name_w$}  {:>10} {:>10} {:>10} {:>10}",
        "node", "in", "out", "dropped", "failed"
    );
    for n in &report.nodes {
        let c = &n.counters;
        eprintln!(
            "{:name_w$}  {:>10} {:>10} {:>10} {:>10}",
            n.name, c.received, c.sent, c.dropped, c.failed
        );
    }
    let total_in: u64 = report
        .nodes
        .iter()
        .zip(&flow.nodes)
        .filter(|(_, s)| s.kind == Kind::Source)
        .map(|(n, _)| n.counters.received)
        .sum();
    eprintln!(
        "{} records in {:.2}s ({}/s)",
        total_in,
        report.elapsed_secs,
        progress::human((total_in as f64 / report.elapsed_secs.max(1e-9)) as u64)
    );
}
