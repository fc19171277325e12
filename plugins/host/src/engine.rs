//! The one wasmtime [`Engine`] of the process, its epoch ticker, the [`Linker`] every plugin is
//! instantiated through, and the on-disk cache of compiled components.
//!
//! - **Deadlines** use epoch interruption: a ticker thread advances the engine's epoch every
//!   [`TICK`]; a call may run for as many ticks as its deadline allows, then traps. Epochs cost
//!   a load and a compare at loop heads and function entries, far less than fuel metering.
//! - **Compiled components** are kept in a cache directory, one file per component, keyed by
//!   the SHA-256 of the component's bytes and the engine's compatibility hash (wasmtime
//!   version, compiler settings, CPU features). A restart then loads machine code instead of
//!   running cranelift again (seconds for a Python component). The directory is
//!   `$FLOW_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/flow/plugins`, else `~/.cache/flow/plugins`; a
//!   cache that cannot be written only costs the compile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, OptLevel};

use crate::PluginError;
use crate::sandbox::HostState;

/// How often the epoch advances: the granularity of deadlines.
pub const TICK: Duration = Duration::from_millis(5);

/// The process-wide engine and linker.
pub struct Shared {
    /// The engine every plugin runs on.
    pub engine: Engine,
    /// WASI (denying by default, see [`crate::sandbox`]) and the `flow:plugin/host` imports.
    pub linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    compat: String,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// The shared engine, made on first use (with its ticker thread).
pub fn shared() -> Result<&'static Shared, PluginError> {
    SHARED
        .get_or_init(|| Shared::new().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| PluginError::Engine(e.clone()))
}

impl Shared {
    fn new() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("flow-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir(),
            compat: format!("{:016x}", h.finish()),
        })
    }

    /// The compiled component of `bytes` (whose SHA-256 is `hash`): from the disk cache when it
    /// holds it, otherwise compiled now and stored.
    pub fn component(&self, bytes: &[u8], hash: &str) -> Result<Component, PluginError> {
        let path = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-{}.cwasm", self.compat)));
        if let Some(path) = &path
            && let Ok(compiled) = std::fs::read(path)
        {
            match load_compiled(&self.engine, &compiled) {
                Ok(c) => return Ok(c),
                // Another wasmtime's file, or a damaged one: compile again and replace it.
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "ignoring a cached plugin")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Some(path) = &path
            && let Err(e) = store(&component, path)
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot cache the compiled plugin");
        }
        Ok(component)
    }
}

/// Write a compiled component where [`load_compiled`] finds it: to a temporary file renamed
/// into place, so a reader never sees half a file.
fn store(component: &Component, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = component.serialize()?;
    let dir = path.parent().ok_or("no cache directory")?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plugin");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Load machine code that [`store`] wrote.
///
/// Safety: `Component::deserialize` trusts its input to be the output of
/// `Component::serialize` (it maps it as code). wasmtime itself rejects files of another
/// version or engine configuration (a header check) and we read the bytes into memory first,
/// so a file changed later cannot change running code. What remains is a file crafted by
/// someone who can write to the user's cache directory, who could equally replace the
/// plugins or the `flow` binary.
#[allow(
    unsafe_code,
    reason = "loading compiled plugins is what makes a restart skip the compile; see Safety"
)]
fn load_compiled(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see the doc comment: only files this module wrote are read.
    unsafe { Component::deserialize(engine, compiled) }
}

fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("FLOW_PLUGIN_CACHE") {
        return Some(dir);
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("flow").join("plugins"))
}
