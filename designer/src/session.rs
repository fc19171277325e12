//! A flow the designer watches: one it runs as a child process (`flow run FILE --api
//! 127.0.0.1:0`), or one already running that it attaches to by its API's URL.
//!
//! Everything that waits happens off the UI thread: a thread reads the child's stderr (the
//! API's address is its line `flow: api listening on URL`), one waits for the child to exit,
//! and one runs a small tokio runtime for the control API (the stats stream, events, a tap,
//! a lineage). They write what arrives into [`Shared`] and ask egui for a repaint then, and
//! only then: between updates the window stays idle.
//!
//! Stop sends SIGTERM (the flow stops gracefully: sources stop, queues drain, sinks flush);
//! a second Stop sends SIGKILL. Dropping a session does the same, so no child outlives a
//! designer that closes. On Linux a designer that is killed (even by SIGKILL) takes its child
//! with it too: the child is started with a parent-death signal (SIGTERM, so it still stops
//! gracefully).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flow_core::observe::{Event, Events, FlowInfo, Stats, TapMessage, TappedRecord};
use flow_core::provenance::query::Lineage;
use flow_core::runtime::RunReport;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The line `flow run --api` prints on stderr before the API's URL.
pub const LISTENING: &str = "flow: api listening on ";
/// Lines of the child's output kept for the log.
const LOG_LINES: usize = 500;
/// Tapped records kept.
pub const TAP_RECORDS: usize = 500;
/// Bulletins kept.
const EVENTS: usize = 500;
/// How often the bulletins are polled and the stats streamed.
const INTERVAL: Duration = Duration::from_secs(1);

/// The `flow` binary: `$FLOW_BIN`, else `flow` next to this executable, else on `PATH`.
pub fn flow_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOW_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let name = format!("flow{}", std::env::consts::EXE_SUFFIX);
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.join(&name).is_file()
    {
        return Some(dir.join(&name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

/// The `${VAR}`s without a default that running `text` needs and the process environment
/// does not set, sorted.
pub fn needed_variables(text: &str, registry: &flow_core::processor::Registry) -> Vec<String> {
    let loaded = flow_core::spec::load(text, &|_| None, registry);
    let mut names: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter_map(|d| d.message.strip_prefix("environment variable `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_owned()))
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The child is starting (its API is not up yet).
    Starting,
    /// Connecting to the API.
    Connecting,
    /// Stats arrive.
    Live,
    /// The flow has ended (its last stats arrived).
    Finished,
    /// The API cannot be reached (an attached flow: retried every second).
    Unreachable(String),
}

/// The tap of one port.
#[derive(Clone, Debug, Default)]
pub struct Tap {
    /// The node and port tapped.
    pub node: String,
    /// The port.
    pub port: String,
    /// The records, oldest first (at most [`TAP_RECORDS`]).
    pub records: VecDeque<TappedRecord>,
    /// Copies the server dropped because we read too slowly.
    pub lost: u64,
    /// Records that arrived while paused (not kept).
    pub skipped: u64,
    /// Paused: records that arrive are not kept.
    pub paused: bool,
    /// Whether the tap stream is open.
    pub open: bool,
    /// Whether the server answered (records from now on are copied).
    pub connected: bool,
    /// Why it ended or could not open.
    pub error: Option<String>,
}

/// A lineage asked for.
#[derive(Clone, Debug)]
pub enum LineageState {
    /// Asked, no answer yet.
    Loading(String),
    /// The tree.
    Found(Lineage),
    /// The API has no provenance (the endpoint is absent, or the flow runs without it), or
    /// the record is unknown: why.
    Unavailable(String, String),
}

/// A replay asked for (`POST /api/v1/provenance/replay/{id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayState {
    /// Asked for record `.0`, no answer yet.
    Sending(String),
    /// Record `.0` was re-injected: what the API said (where, as which new record).
    Done(String, String),
    /// Record `.0` could not be replayed: why.
    Failed(String, String),
}

/// What the background threads write and the UI reads.
#[derive(Default)]
pub struct Shared {
    /// The API's base URL once known.
    pub url: Option<String>,
    /// Where the session is.
    pub status: Option<Status>,
    /// The running graph (`/api/v1/flow`).
    pub flow: Option<FlowInfo>,
    /// The latest stats.
    pub stats: Option<Stats>,
    /// The bulletins, oldest first.
    pub events: VecDeque<Event>,
    /// The child's stderr and stdout, last lines.
    pub log: VecDeque<String>,
    /// How the child exited.
    pub exit: Option<String>,
    /// The child's `--report`, once it exited.
    pub report: Option<RunReport>,
    /// The tap, when one is open.
    pub tap: Option<Tap>,
    /// The lineage asked for last.
    pub lineage: Option<LineageState>,
    /// The replay asked for last.
    pub replay: Option<ReplayState>,
    /// Increases with every change of `stats` or `events` (the UI rebuilds its view then).
    pub seq: u64,
}

impl Shared {
    fn log(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }
}

enum Command {
    Url(String),
    Tap { node: String, port: String },
    Untap,
    Lineage(String),
    Replay(String),
}

enum Process {
    Running(std::process::Child),
    Exited,
}

/// A running or attached flow.
pub struct Session {
    shared: Arc<Mutex<Shared>>,
    commands: UnboundedSender<Command>,
    process: Option<Arc<Mutex<Process>>>,
    pid: Option<u32>,
    stops: u32,
    report_dir: Option<PathBuf>,
    /// The file run, or the URL attached to.
    pub target: String,
    attached: bool,
}

impl Session {
    /// Run `file` with `flow` (`bin`) and these extra environment variables.
    pub fn run(
        bin: &Path,
        file: &Path,
        env: &[(String, String)],
        ctx: &egui::Context,
    ) -> Result<Self, String> {
        let report_dir = std::env::temp_dir().join(format!(
            "flow-designer-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir_all(&report_dir)
            .map_err(|e| format!("cannot make {}: {e}", report_dir.display()))?;
        let report = report_dir.join("report.json");
        let mut command = std::process::Command::new(bin);
        end_with_parent(&mut command);
        let mut child = command
            .arg("run")
            .arg(file)
            .args(["--api", "127.0.0.1:0", "--report"])
            .arg(&report)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", bin.display()))?;
        let pid = child.id();
        let (stderr, stdout) = (child.stderr.take(), child.stdout.take());
        let shared = Arc::new(Mutex::new(Shared {
            status: Some(Status::Starting),
            ..Default::default()
        }));
        let (tx, rx) = unbounded_channel();
        let process = Arc::new(Mutex::new(Process::Running(child)));
        if let Some(stderr) = stderr {
            let (shared, ctx, tx) = (shared.clone(), ctx.clone(), tx.clone());
            std::thread::spawn(move || read_lines(stderr, &shared, &ctx, Some(&tx)));
        }
        if let Some(stdout) = stdout {
            let (shared, ctx) = (shared.clone(), ctx.clone());
            std::thread::spawn(move || read_lines(stdout, &shared, &ctx, None));
        }
        {
            let (shared, ctx, process) = (shared.clone(), ctx.clone(), process.clone());
            std::thread::spawn(move || wait_child(&process, &shared, &ctx, &report));
        }
        spawn_network(shared.clone(), rx, ctx.clone(), None, None);
        Ok(Self {
            shared,
            commands: tx,
            process: Some(process),
            pid: Some(pid),
            stops: 0,
            report_dir: Some(report_dir),
            target: file.display().to_string(),
            attached: false,
        })
    }

    /// Attach to the API at `url` (`http://HOST:PORT`, or `HOST:PORT`).
    pub fn attach(url: &str, token: Option<String>, ctx: &egui::Context) -> Self {
        let url = base_url(url);
        let shared = Arc::new(Mutex::new(Shared {
            status: Some(Status::Connecting),
            url: Some(url.clone()),
            ..Default::default()
        }));
        let (tx, rx) = unbounded_channel();
        spawn_network(
            shared.clone(),
            rx,
            ctx.clone(),
            Some(url.clone()),
            token.filter(|t| !t.is_empty()),
        );
        Self {
            shared,
            commands: tx,
            process: None,
            pid: None,
            stops: 0,
            report_dir: None,
            target: url,
            attached: true,
        }
    }

    /// What the background threads wrote.
    pub fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The child's process id, when the designer runs the flow.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether this session attached to a flow it did not start.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Whether the child still runs (an attached flow: always false).
    pub fn running(&self) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| matches!(*lock(p), Process::Running(_)))
    }

    /// How many times Stop was pressed.
    pub fn stops(&self) -> u32 {
        self.stops
    }

    /// Stop the child: SIGTERM the first time (graceful), SIGKILL after.
    pub fn stop(&mut self) {
        let Some(p) = &self.process else { return };
        self.stops += 1;
        let mut p = lock(p);
        if let Process::Running(child) = &mut *p {
            if self.stops == 1 {
                terminate(child);
            } else {
                let _ = child.kill();
            }
        }
    }

    /// Tap `node`'s `port`: its records arrive in [`Shared::tap`].
    pub fn tap(&self, node: &str, port: &str) {
        self.shared().tap = Some(Tap {
            node: node.to_owned(),
            port: port.to_owned(),
            open: true,
            ..Default::default()
        });
        let _ = self.commands.send(Command::Tap {
            node: node.to_owned(),
            port: port.to_owned(),
        });
    }

    /// Close the tap.
    pub fn untap(&self) {
        self.shared().tap = None;
        let _ = self.commands.send(Command::Untap);
    }

    /// Ask for the lineage of record `id`: it arrives in [`Shared::lineage`].
    pub fn lineage(&self, id: &str) {
        self.shared().lineage = Some(LineageState::Loading(id.to_owned()));
        let _ = self.commands.send(Command::Lineage(id.to_owned()));
    }

    /// Re-inject the kept content of record `id` into the running flow, where it entered
    /// (see `flow provenance replay --api`): the answer arrives in [`Shared::replay`].
    pub fn replay(&self, id: &str) {
        self.shared().replay = Some(ReplayState::Sending(id.to_owned()));
        let _ = self.commands.send(Command::Replay(id.to_owned()));
    }

    /// Block until the child has exited (tests; at most `timeout`). True if it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while self.running() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Graceful first, then for good: no child outlives the session.
        if self.running() {
            if self.stops == 0 {
                self.stop();
                let _ = self.wait(Duration::from_secs(3));
            }
            if self.running() {
                self.stops = self.stops.max(1);
                self.stop();
                let _ = self.wait(Duration::from_secs(3));
            }
        }
        if let Some(dir) = &self.report_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Ask egui for one frame, now. Not `request_repaint`: that asks for two (egui's way "to give
/// some things time to settle"), which doubled the frames, and the CPU, of a designer watching a
/// flow. What arrives is read at the start of the next frame, so one is enough.
pub fn wake(ctx: &egui::Context) {
    ctx.request_repaint_after(Duration::from_millis(1));
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// On Linux: the child gets SIGTERM when the thread that started it ends, which for the
/// designer is its UI thread (the process's life), so a designer killed by SIGKILL leaves no
/// `flow run` behind. Elsewhere nothing (the child outlives a killed designer).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn end_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec; it only makes two system
    // calls (prctl, getppid) and raises a signal, all async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent died between fork and prctl: no signal will come, so stop now.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("the designer has exited"));
            }
            Ok(())
        });
    }
}

/// On Linux: the child gets SIGTERM when the thread that started it ends (see there).
#[cfg(not(target_os = "linux"))]
pub fn end_with_parent(_command: &mut std::process::Command) {}

#[cfg(unix)]
fn terminate(child: &mut std::process::Child) {
    // The child is not reaped while `Process` is locked, so its pid is still its own.
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut std::process::Child) {
    let _ = child.kill();
}

/// `http://HOST:PORT` from what a user typed.
fn base_url(url: &str) -> String {
    let url = url.trim();
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    url.trim_end_matches('/').to_owned()
}

fn read_lines(
    from: impl Read,
    shared: &Mutex<Shared>,
    ctx: &egui::Context,
    url: Option<&UnboundedSender<Command>>,
) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if let Some(tx) = url
            && let Some(u) = line.strip_prefix(LISTENING)
        {
            let u = u.trim().to_owned();
            {
                let mut s = lock(shared);
                s.url = Some(u.clone());
                s.status = Some(Status::Connecting);
            }
            let _ = tx.send(Command::Url(u));
        }
        lock(shared).log(line);
        wake(ctx);
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(0) => "exited normally".to_owned(),
        Some(c) => format!("exited with status {c}"),
        None => "exited".to_owned(),
    }
}

fn wait_child(
    process: &Mutex<Process>,
    shared: &Mutex<Shared>,
    ctx: &egui::Context,
    report: &Path,
) {
    let status = loop {
        {
            let mut p = lock(process);
            match &mut *p {
                Process::Running(child) => match child.try_wait() {
                    Ok(Some(status)) => {
                        *p = Process::Exited;
                        break Some(status);
                    }
                    Ok(None) => {}
                    Err(_) => {
                        *p = Process::Exited;
                        break None;
                    }
                },
                Process::Exited => break None,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = std::fs::read(report)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunReport>(&b).ok());
    {
        let mut s = lock(shared);
        s.exit = Some(status.map_or_else(|| "exited".to_owned(), describe));
        s.report = report;
        if s.status != Some(Status::Finished) {
            s.status = Some(Status::Finished);
        }
        if let Some(t) = &mut s.tap {
            t.open = false;
        }
        s.seq += 1;
    }
    wake(ctx);
}

/// How long a request waits for its answer (a stream: for the start of it) before it fails
/// with an error the UI shows: a flow whose API does not answer leaves no window waiting.
const ANSWER: Duration = Duration::from_secs(30);

/// A client of one flow's API.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// See [`ANSWER`].
    answer: Duration,
}

/// Whether a request answers all at once (bounded by [`Client::answer`] as a whole) or
/// streams (only its start is bounded).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Whole,
    Stream,
}

impl Client {
    fn new(base: String, token: Option<String>) -> Result<Self, String> {
        // reqwest's TLS wants a process-wide crypto provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: base_url(&base),
            token,
            answer: ANSWER,
        })
    }

    /// What a request that timed out says.
    fn no_answer(&self, url: &str) -> String {
        format!(
            "{url}: no answer within {} s (the flow's API is busy or stuck)",
            self.answer.as_secs_f32()
        )
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, (Option<u16>, String)> {
        self.request(reqwest::Method::GET, path, Answer::Whole)
            .await
    }

    async fn stream(&self, path: &str) -> Result<reqwest::Response, (Option<u16>, String)> {
        self.request(reqwest::Method::GET, path, Answer::Stream)
            .await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        answer: Answer,
    ) -> Result<reqwest::Response, (Option<u16>, String)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if answer == Answer::Whole {
            // Reading the body too.
            req = req.timeout(self.answer);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = match tokio::time::timeout(self.answer, req.send()).await {
            Err(_) => return Err((None, self.no_answer(&url))),
            Ok(Err(e)) if e.is_timeout() => return Err((None, self.no_answer(&url))),
            Ok(Err(e)) if e.is_connect() => {
                return Err((None, format!("no flow API at {}", self.base)));
            }
            Ok(Err(e)) => return Err((None, format!("{url}: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err((
                Some(401),
                format!("{}: the API needs a token (or another one)", self.base),
            ));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            return Err((Some(status.as_u16()), format!("{status}: {message}")));
        }
        Ok(resp)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, (Option<u16>, String)> {
        let resp = self.get(path).await?;
        self.json(resp, path).await
    }

    /// The body of an answer to `path`, as JSON.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        path: &str,
    ) -> Result<T, (Option<u16>, String)> {
        let bytes = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                (None, self.no_answer(&format!("{}{path}", self.base)))
            } else {
                (None, format!("reading {path}: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| (None, format!("{path}: unexpected JSON: {e}")))
    }
}

fn spawn_network(
    shared: Arc<Mutex<Shared>>,
    commands: UnboundedReceiver<Command>,
    ctx: egui::Context,
    url: Option<String>,
    token: Option<String>,
) {
    std::thread::Builder::new()
        .name("flow-designer-api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    lock(&shared).status = Some(Status::Unreachable(format!("no runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(network(shared, commands, ctx, url, token));
        })
        .ok();
}

/// The session's network side: ends when the session is dropped (its command channel closes).
async fn network(
    shared: Arc<Mutex<Shared>>,
    mut commands: UnboundedReceiver<Command>,
    ctx: egui::Context,
    url: Option<String>,
    token: Option<String>,
) {
    let attached = url.is_some();
    let mut client: Option<Client> = None;
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut tap: Option<tokio::task::JoinHandle<()>> = None;
    let connect = |url: String, tasks: &mut Vec<tokio::task::JoinHandle<()>>| -> Option<Client> {
        match Client::new(url, token.clone()) {
            Ok(c) => {
                tasks.push(tokio::spawn(watch_stats(
                    c.clone(),
                    shared.clone(),
                    ctx.clone(),
                    attached,
                )));
                tasks.push(tokio::spawn(watch_events(
                    c.clone(),
                    shared.clone(),
                    ctx.clone(),
                )));
                Some(c)
            }
            Err(e) => {
                lock(&shared).status = Some(Status::Unreachable(e));
                wake(&ctx);
                None
            }
        }
    };
    if let Some(u) = url {
        client = connect(u, &mut tasks);
    }
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Url(u) => {
                if client.is_none() {
                    client = connect(u, &mut tasks);
                }
            }
            Command::Tap { node, port } => {
                if let Some(t) = tap.take() {
                    t.abort();
                }
                if let Some(c) = &client {
                    tap = Some(tokio::spawn(run_tap(
                        c.clone(),
                        shared.clone(),
                        ctx.clone(),
                        node,
                        port,
                    )));
                } else if let Some(t) = &mut lock(&shared).tap {
                    t.open = false;
                    t.error = Some("the flow's API is not up".into());
                }
            }
            Command::Untap => {
                if let Some(t) = tap.take() {
                    t.abort();
                }
            }
            Command::Lineage(id) => {
                let (shared, ctx) = (shared.clone(), ctx.clone());
                match client.clone() {
                    Some(c) => {
                        tasks.push(tokio::spawn(async move {
                            let state = fetch_lineage(&c, &id).await;
                            lock(&shared).lineage = Some(state);
                            wake(&ctx);
                        }));
                    }
                    None => {
                        lock(&shared).lineage = Some(LineageState::Unavailable(
                            id,
                            "the flow's API is not up".into(),
                        ));
                    }
                }
            }
            Command::Replay(id) => {
                let (shared, ctx) = (shared.clone(), ctx.clone());
                let state = match client.clone() {
                    Some(c) => {
                        tasks.push(tokio::spawn(async move {
                            let state = replay(&c, &id).await;
                            lock(&shared).replay = Some(state);
                            ctx.request_repaint();
                        }));
                        continue;
                    }
                    None => ReplayState::Failed(id, "the flow's API is not up".into()),
                };
                lock(&shared).replay = Some(state);
            }
        }
    }
    for t in tasks.into_iter().chain(tap) {
        t.abort();
    }
}

async fn replay(c: &Client, id: &str) -> ReplayState {
    let path = format!("/api/v1/provenance/replay/{}", encode(id));
    let answer = match c.request(reqwest::Method::POST, &path, Answer::Whole).await {
        Ok(resp) => c.json::<serde_json::Value>(resp, &path).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(v) => {
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
            let records: Vec<&str> = v
                .get("records")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            ReplayState::Done(
                id.to_owned(),
                format!(
                    "replayed {} at {} as {}",
                    field("original"),
                    field("node"),
                    records.join(", ")
                ),
            )
        }
        Err((_, m)) => ReplayState::Failed(id.to_owned(), m),
    }
}

async fn fetch_lineage(c: &Client, id: &str) -> LineageState {
    let path = format!("/api/v1/provenance/lineage/{}", encode(id));
    match c.get_json::<Lineage>(&path).await {
        Ok(l) => LineageState::Found(l),
        Err((Some(404), m)) if m.contains("no such endpoint") || !m.contains(id) => {
            LineageState::Unavailable(id.to_owned(), format!("provenance not available ({m})"))
        }
        Err((_, m)) => LineageState::Unavailable(id.to_owned(), m),
    }
}

/// The graph once, then the stats stream; again after a second when it breaks, until the
/// flow has finished (or, for a child, has exited).
async fn watch_stats(c: Client, shared: Arc<Mutex<Shared>>, ctx: egui::Context, attached: bool) {
    loop {
        let needs_flow = lock(&shared).flow.is_none();
        if needs_flow && let Ok(f) = c.get_json::<FlowInfo>("/api/v1/flow").await {
            let mut s = lock(&shared);
            s.flow = Some(f);
            s.seq += 1;
            wake(&ctx);
        }
        let result = stream_stats(&c, &shared, &ctx).await;
        let (finished, exited) = {
            let s = lock(&shared);
            (
                s.stats.as_ref().is_some_and(|st| st.finished),
                s.exit.is_some(),
            )
        };
        if finished && !attached {
            return;
        }
        if exited {
            return;
        }
        if let Err(e) = result {
            let mut s = lock(&shared);
            if !finished {
                s.status = Some(Status::Unreachable(e));
            }
            wake(&ctx);
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn stream_stats(
    c: &Client,
    shared: &Mutex<Shared>,
    ctx: &egui::Context,
) -> Result<(), String> {
    let path = format!("/api/v1/stats/stream?interval={}ms", INTERVAL.as_millis());
    let mut resp = c.stream(&path).await.map_err(|(_, m)| m)?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        buf.extend_from_slice(&chunk);
        while let Some(end) = find(&buf, b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            match serde_json::from_str::<Stats>(&data) {
                Ok(stats) => {
                    let mut s = lock(shared);
                    s.status = Some(if stats.finished {
                        Status::Finished
                    } else {
                        Status::Live
                    });
                    s.stats = Some(stats);
                    s.seq += 1;
                    drop(s);
                    wake(ctx);
                }
                Err(e) => return Err(format!("stats: unexpected JSON: {e}")),
            }
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bulletins, polled every second until the flow has finished.
async fn watch_events(c: Client, shared: Arc<Mutex<Shared>>, ctx: egui::Context) {
    let mut since: Option<u64> = None;
    loop {
        let path = match since {
            Some(s) => format!("/api/v1/events?since={s}"),
            None => "/api/v1/events".to_owned(),
        };
        if let Ok(events) = c.get_json::<Events>(&path).await
            && !events.events.is_empty()
        {
            since = events.events.last().map(|e| e.seq);
            let mut s = lock(&shared);
            for e in events.events {
                if s.events.len() == EVENTS {
                    s.events.pop_front();
                }
                s.events.push_back(e);
            }
            s.seq += 1;
            // While stats stream in, the next one draws these too (within a second): a frame
            // of their own would double the frames of a flow with bulletins.
            let streaming = s.status == Some(Status::Live);
            drop(s);
            if !streaming {
                wake(&ctx);
            }
        }
        let done = {
            let s = lock(&shared);
            s.exit.is_some() || s.stats.as_ref().is_some_and(|st| st.finished)
        };
        if done {
            return;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn run_tap(
    c: Client,
    shared: Arc<Mutex<Shared>>,
    ctx: egui::Context,
    node: String,
    port: String,
) {
    let path = format!(
        "/api/v1/tap?format=ndjson&node={}&port={}",
        encode(&node),
        encode(&port)
    );
    let end = |why: Option<String>| {
        if let Some(t) = &mut lock(&shared).tap
            && t.node == node
            && t.port == port
        {
            t.open = false;
            t.error = why;
        }
        wake(&ctx);
    };
    let mut resp = match c.stream(&path).await {
        Ok(r) => r,
        Err((_, m)) => return end(Some(m)),
    };
    if let Some(t) = &mut lock(&shared).tap {
        t.connected = true;
    }
    wake(&ctx);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return end(None),
            Err(e) => return end(Some(e.to_string())),
        };
        buf.extend_from_slice(&chunk);
        let mut got = false;
        {
            let mut s = lock(&shared);
            let Some(t) = &mut s.tap else { return };
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                match serde_json::from_slice::<TapMessage>(&line) {
                    Ok(TapMessage::Record(r)) if t.paused => {
                        drop(r);
                        t.skipped += 1;
                    }
                    Ok(TapMessage::Record(r)) => {
                        if t.records.len() == TAP_RECORDS {
                            t.records.pop_front();
                        }
                        t.records.push_back(r);
                        got = true;
                    }
                    Ok(TapMessage::Lost { lost }) => t.lost += lost,
                    Err(_) => {}
                }
            }
        }
        if got {
            wake(&ctx);
        }
    }
}

/// Percent-encode a query or path value.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An API that takes connections and never answers: a lineage asked of it ends, with
    /// an error saying so (the window shows it), instead of "asking…" for ever.
    #[test]
    fn a_lineage_asked_of_an_api_that_never_answers_fails_with_a_clear_error() {
        // Connections are taken (the listen backlog) and never answered, nor closed.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("addr"));
        let mut c = Client::new(url.clone(), None).expect("client");
        c.answer = Duration::from_millis(300);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = runtime.block_on(fetch_lineage(&c, "00ff"));
        match state {
            LineageState::Unavailable(id, why) => {
                assert_eq!(id, "00ff");
                assert_eq!(
                    why,
                    format!(
                        "{url}/api/v1/provenance/lineage/00ff: no answer within 0.3 s (the flow's API is busy or stuck)"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        // A replay too.
        let state = runtime.block_on(replay(&c, "00ff"));
        assert!(
            matches!(&state, ReplayState::Failed(_, why) if why.contains("no answer within")),
            "{state:?}"
        );
        drop(silent);
    }

    #[test]
    fn urls_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(base_url("127.0.0.1:9420"), "http://127.0.0.1:9420");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
    }

    #[test]
    fn needed_variables_are_those_without_a_default_nor_a_value() {
        let text = "processors:\n  a:\n    type: generate\n    count: ${FLOW_DESIGNER_TEST_N:-3}\n  b:\n    type: file_sink\n    path: ${FLOW_DESIGNER_TEST_DIR}/x.jsonl\nconnections:\n  - a -> b\n";
        assert_eq!(
            needed_variables(text, &flow_processors::builtin()),
            ["FLOW_DESIGNER_TEST_DIR"]
        );
    }
}
