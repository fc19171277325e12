//! The sandbox a plugin instance runs in: its store, its limits and what WASI grants it.
//!
//! By default a plugin gets nothing from the outside world: no preopened directory (so no
//! filesystem), no socket (TCP, UDP and name lookups are refused), no environment variable,
//! no argument, an empty stdin, and clocks frozen at the Unix epoch. A flow grants each of
//! these per processor (`grants:`); a granted wall clock reads the flow's processing time
//! ([`FlowTime`]), so that `flow test` drives it as it drives every processor's. Randomness is always available (hash maps need it).
//! Whatever the guest writes to stdout or stderr goes to the flow's log, bounded.
//!
//! Limits hold per instance: the linear memories together may not exceed `memory` (a
//! [`wasmtime::ResourceLimiter`] that refuses the growth and traps), tables are capped, and
//! every call (`describe`, `init`, `process`) runs under an epoch deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{self, Input, Level, Outcome, PluginInfo};
use crate::engine::{self, TICK};
use crate::module::Module;

/// Default cap on an instance's linear memories, together.
pub const DEFAULT_MEMORY: usize = 64 << 20;
/// Default deadline of one call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default cap on what one `process` call may answer (contents, attributes and ports).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Cap on the elements of one table (a Python component has some tens of thousands).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Cap on the instances, tables and memories a component may create.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;
/// What the guest may write to stdout and stderr per call before the rest is dropped.
const MAX_GUEST_OUTPUT: usize = 64 << 10;
/// Log lines (`flow:plugin/host.log`) kept per call; the rest are counted.
const MAX_LOG_LINES: u32 = 100;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4 << 10;

/// What bounds an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long one call may run.
    pub deadline: Duration,
    /// Bytes of linear memory, all memories together.
    pub memory: usize,
    /// Bytes one `process` call may answer.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            memory: DEFAULT_MEMORY,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// What the outside world lends a plugin (nothing by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables, with their values.
    pub env: Vec<(String, String)>,
    /// Host directories the guest sees.
    pub dirs: Vec<DirGrant>,
    /// TCP, UDP and name lookups to any address.
    pub network: bool,
    /// The clocks: the wall clock reads [`Grants::time`], the monotonic clock is the real one
    /// (otherwise both read zero).
    pub clock: bool,
    /// The flow's processing time, as a granted wall clock reads it.
    pub time: FlowTime,
}

/// The flow's processing time as a plugin's wall clock reads it: the flow's
/// [`flow_core::clock::Clock`] when the batch being processed was handed to the plugin (set
/// by the processor before each call; constant during a call, which its deadline bounds). A
/// flow's processors never read the system clock themselves, so `flow test` moves this one
/// too. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct FlowTime(Arc<AtomicI64>);

impl FlowTime {
    /// The time now is `epoch_ms`.
    pub fn set(&self, epoch_ms: i64) {
        self.0.store(epoch_ms, Ordering::Relaxed);
    }

    /// The time set last, in epoch milliseconds.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl PartialEq for FlowTime {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FlowTime {}

impl wasmtime_wasi::HostWallClock for FlowTime {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.get()).unwrap_or(0))
    }
}

/// A host directory lent to a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may write in it.
    pub writable: bool,
}

/// Why a call into a plugin failed. Every variant discards the instance.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was interrupted.
    #[error("plugin ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// The guest asked for more memory than its cap.
    #[error("plugin exceeded its memory limit: {0}")]
    Memory(String),
    /// The guest trapped (a panic, an `unreachable`, an out-of-bounds access, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The answer breaks the contract (not one outcome per input, an unknown port).
    #[error("plugin answered malformed results: {0}")]
    Malformed(String),
    /// The answer is larger than `max_output_bytes`.
    #[error("plugin answered {size} bytes, more than limits.max_output_bytes ({cap})")]
    OutputTooLarge {
        /// Bytes answered.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The instance could not be made (its instantiation trapped or could not link).
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

/// The data of a plugin's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    processor: Arc<str>,
    log_lines: u32,
    log_dropped: u32,
    stdout: Capture,
    stderr: Capture,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::flow::plugin::host::Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if self.log_lines >= MAX_LOG_LINES {
            self.log_dropped += 1;
            return;
        }
        self.log_lines += 1;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let processor = &*self.processor;
        match level {
            Level::Trace => tracing::trace!(processor, "{message}"),
            Level::Debug => tracing::debug!(processor, "{message}"),
            Level::Info => tracing::info!(processor, "{message}"),
            Level::Warn => tracing::warn!(processor, "{message}"),
            Level::Error => tracing::error!(processor, "{message}"),
        }
    }
}

impl bindings::flow::plugin::types::Host for HostState {}

/// Caps memories (all of them together), tables and counts; remembers why it refused.
struct Limiter {
    memory_cap: usize,
    memory_used: usize,
    refused: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current.min(self.memory_used) + desired;
        if total > self.memory_cap {
            let msg = format!(
                "asked for {} of linear memory, more than limits.memory ({})",
                bytesize::ByteSize::b(total as u64).display().iec(),
                bytesize::ByteSize::b(self.memory_cap as u64)
                    .display()
                    .iec(),
            );
            self.refused = Some(msg.clone());
            return Err(wasmtime::format_err!("{msg}"));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            let msg = format!("a table of {desired} elements, more than {MAX_TABLE_ELEMENTS}");
            self.refused = Some(msg.clone());
            return Err(wasmtime::format_err!("{msg}"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A clock frozen at the Unix epoch, for plugins not granted the real one.
struct Frozen;

impl wasmtime_wasi::HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A guest's stdout or stderr: kept in memory (bounded, never refusing a write, so printing
/// cannot trap a guest) and logged after each call.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Capture {
    fn take(&self) -> (Vec<u8>, usize) {
        let mut b = self.0.lock();
        (std::mem::take(&mut b.bytes), std::mem::take(&mut b.dropped))
    }

    fn write(&self, data: &[u8]) {
        let mut b = self.0.lock();
        let room = MAX_GUEST_OUTPUT.saturating_sub(b.bytes.len());
        let n = room.min(data.len());
        b.bytes.extend_from_slice(&data[..n]);
        b.dropped += data.len() - n;
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        Capture::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Capture::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A live plugin instance: a store of its own, reused call after call until a call fails.
pub struct Instance {
    store: Store<HostState>,
    plugin: bindings::Plugin,
    deadline: Duration,
}

impl Instance {
    /// Instantiate `module` under `limits`, with `grants`. Blocks while the instance is made;
    /// callable from anywhere (inside a tokio runtime it runs on a thread of its own).
    pub fn new(
        module: &Module,
        limits: &Limits,
        grants: &Grants,
        processor: Arc<str>,
    ) -> Result<Self, CallError> {
        off_runtime(|| Self::make(module, limits, grants, processor))
    }

    fn make(
        module: &Module,
        limits: &Limits,
        grants: &Grants,
        processor: Arc<str>,
    ) -> Result<Self, CallError> {
        let shared = engine::shared().map_err(|e| CallError::Instantiate(e.to_string()))?;
        let stdout = Capture::default();
        let stderr = Capture::default();
        let wasi = wasi_ctx(grants, &stdout, &stderr)?;
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_cap: limits.memory,
                memory_used: 0,
                refused: None,
            },
            processor,
            log_lines: 0,
            log_dropped: 0,
            stdout,
            stderr,
        };
        let mut store = Store::new(&shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.deadline));
        let pre = module.pre();
        let made = block_on(limits.deadline, pre.instantiate_async(&mut store));
        let plugin = match made {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(match classify(&mut store, limits.deadline, &e) {
                    CallError::Trap(m) => CallError::Instantiate(m),
                    other => other,
                });
            }
            Err(timeout) => return Err(timeout),
        };
        let mut instance = Self {
            store,
            plugin,
            deadline: limits.deadline,
        };
        instance.drain_output();
        Ok(instance)
    }

    /// The plugin's description.
    pub fn describe(&mut self) -> Result<PluginInfo, CallError> {
        off_runtime(|| self.call(async |p, s| p.flow_plugin_guest().call_describe(s).await))
    }

    /// Hand the plugin its config; `Ok(Err(_))` is the plugin refusing it.
    pub fn init(&mut self, config: &str) -> Result<Result<(), String>, CallError> {
        off_runtime(|| self.call(async |p, s| p.flow_plugin_guest().call_init(s, config).await))
    }

    /// Transform a batch; the answer is checked to hold one outcome per input. Must not be
    /// called inside a tokio runtime (the `wasm` processor calls it from its own thread).
    pub fn process(&mut self, batch: &[Input]) -> Result<Vec<Outcome>, CallError> {
        let outcomes =
            self.call(async |p, s| p.flow_plugin_guest().call_process(s, batch).await)?;
        if outcomes.len() != batch.len() {
            return Err(CallError::Malformed(format!(
                "{} outcomes for {} inputs (the answer holds exactly one per input, in order)",
                outcomes.len(),
                batch.len()
            )));
        }
        Ok(outcomes)
    }

    fn call<R>(
        &mut self,
        f: impl AsyncFnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.store.set_epoch_deadline(ticks(self.deadline));
        let data = self.store.data_mut();
        data.log_lines = 0;
        data.log_dropped = 0;
        let deadline = self.deadline;
        let out = match block_on(deadline, f(&self.plugin, &mut self.store)) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(classify(&mut self.store, deadline, &e)),
            Err(timeout) => Err(timeout),
        };
        self.drain_output();
        out
    }

    /// Log what the guest printed during the last call.
    fn drain_output(&mut self) {
        let data = self.store.data_mut();
        let processor = data.processor.clone();
        let processor = &*processor;
        if data.log_dropped > 0 {
            tracing::warn!(
                processor,
                dropped = data.log_dropped,
                "plugin log lines dropped (at most {MAX_LOG_LINES} per call)"
            );
        }
        for (stream, capture) in [("stdout", &data.stdout), ("stderr", &data.stderr)] {
            let (bytes, dropped) = capture.take();
            for line in String::from_utf8_lossy(&bytes).lines() {
                tracing::info!(processor, stream, "plugin: {line}");
            }
            if dropped > 0 {
                tracing::warn!(processor, stream, dropped, "plugin output bytes dropped");
            }
        }
    }
}

/// Run `f` where a blocking call is allowed: here, or on a scoped thread when this thread is
/// inside a tokio runtime (which may not block on another one).
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

thread_local! {
    /// The runtime guest calls run on: one per thread that calls guests.
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
}

/// Run a guest call to completion, or until `deadline` (plus two ticks, so that a guest
/// running code is stopped by its epoch deadline first, with that reason) when it is blocked
/// in a host call, such as a WASI sleep, which the epoch cannot interrupt.
fn block_on<R>(deadline: Duration, f: impl Future<Output = R>) -> Result<R, CallError> {
    RUNTIME.with(|rt| match rt {
        Some(rt) => rt
            .block_on(async { tokio::time::timeout(deadline + 2 * TICK, f).await })
            .map_err(|_| CallError::Deadline(deadline)),
        None => Err(CallError::Instantiate(
            "cannot make the runtime guest calls run on".into(),
        )),
    })
}

/// Deadline in epoch ticks, rounded up, plus the tick in progress.
fn ticks(deadline: Duration) -> u64 {
    let t = deadline.as_nanos().div_ceil(TICK.as_nanos());
    u64::try_from(t).unwrap_or(u64::MAX / 2).max(1) + 1
}

/// Why a call failed, in words an operator can act on.
fn classify(store: &mut Store<HostState>, deadline: Duration, e: &wasmtime::Error) -> CallError {
    let data = store.data_mut();
    if let Some(why) = data.limiter.refused.take() {
        return CallError::Memory(why);
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Deadline(deadline);
    }
    let (stderr, _) = data.stderr.take();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    // Keep the root cause, not wasmtime's whole chain of contexts.
    let root = e.root_cause().to_string();
    if stderr.is_empty() {
        CallError::Trap(root)
    } else {
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .rev()
            .take(5)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        CallError::Trap(format!("{root}; stderr: {}", tail.join(" | ")))
    }
}

fn wasi_ctx(grants: &Grants, stdout: &Capture, stderr: &Capture) -> Result<WasiCtx, CallError> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(stdout.clone()).stderr(stderr.clone());
    b.allow_blocking_current_thread(true);
    for (k, v) in &grants.env {
        b.env(k, v);
    }
    for d in &grants.dirs {
        let perms = if d.writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
            CallError::Instantiate(format!("cannot lend directory `{}`: {e}", d.host.display()))
        })?;
    }
    if grants.network {
        b.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
    } else {
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
    }
    if grants.clock {
        b.wall_clock(grants.time.clone());
    } else {
        b.wall_clock(Frozen).monotonic_clock(Frozen);
    }
    Ok(b.build())
}
