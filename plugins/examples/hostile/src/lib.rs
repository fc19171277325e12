//! A plugin that misbehaves on purpose, for the sandbox's tests.
//!
//! Records pass through to `out` unchanged, except those whose JSON has `"evil": true`: on
//! those the plugin does what `mode` says. It implements the world's `guest` interface itself
//! (not the SDK's traits) so that it can also break the contract: answer for inputs it was not
//! given, omit some, or send to ports it does not have.

use std::cell::RefCell;

use flow_plugin::bindings::exports::flow::plugin::guest::{
    Guest, Input, Outcome, Output, PluginInfo,
};

/// What to do on an evil record.
#[derive(Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Loop forever.
    Loop,
    /// Allocate until memory runs out.
    Memory,
    /// Execute `unreachable`.
    Trap,
    /// Panic.
    Panic,
    /// Answer `size` bytes for the record.
    Giant,
    /// Answer one outcome more than there were inputs.
    Extra,
    /// Answer one outcome fewer.
    Missing,
    /// Send the record to a port that does not exist.
    BadPort,
    /// Sleep in a host call (WASI's monotonic clock) for a minute.
    Sleep,
    /// Read `path` from the filesystem; answer its first bytes.
    Fs,
    /// Connect to `addr` over TCP; answer whether it worked.
    Net,
    /// Read the environment variable `var`; answer its value.
    Env,
    /// Read the wall clock; answer it.
    Clock,
    /// Write a megabyte to stderr and 10,000 log lines.
    Noise,
}

/// The hostile plugin's config.
#[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to do on records with `"evil": true`.
    pub mode: Mode,
    /// Bytes answered in `giant` mode (default 32 MiB).
    #[serde(default = "default_size")]
    pub size: usize,
    /// The file `fs` mode reads.
    #[serde(default = "default_path")]
    pub path: String,
    /// The address `net` mode connects to.
    #[serde(default = "default_addr")]
    pub addr: String,
    /// The variable `env` mode reads.
    #[serde(default = "default_var")]
    pub var: String,
}

fn default_size() -> usize {
    32 << 20
}
fn default_path() -> String {
    "/etc/passwd".into()
}
fn default_addr() -> String {
    "127.0.0.1:9".into()
}
fn default_var() -> String {
    "HOME".into()
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct Hostile;

fn pass() -> Output {
    Output {
        port: "out".into(),
        content: None,
        attributes: Vec::new(),
        event_time: None,
    }
}

fn answer(value: serde_json::Value) -> Outcome {
    Ok(vec![Output {
        port: "out".into(),
        content: Some(value.to_string().into_bytes()),
        attributes: Vec::new(),
        event_time: None,
    }])
}

fn is_evil(input: &Input) -> bool {
    serde_json::from_slice::<serde_json::Value>(&input.content)
        .ok()
        .and_then(|v| v.get("evil").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "misbehaves on purpose on records with \"evil\": true".into(),
            outputs: vec!["out".into()],
            config_schema: serde_json::to_string(&schemars::schema_for!(Config))
                .unwrap_or_default(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        CONFIG.with(|cell| *cell.borrow_mut() = Some(c));
        Ok(())
    }

    fn process(batch: Vec<Input>) -> Vec<Outcome> {
        let Some(config) = CONFIG.with(|c| c.borrow().clone()) else {
            return batch
                .iter()
                .map(|_| Err("not initialised".into()))
                .collect();
        };
        let evil = batch.iter().any(is_evil);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        for input in &batch {
            if !is_evil(input) {
                outcomes.push(Ok(vec![pass()]));
                continue;
            }
            outcomes.push(match config.mode {
                Mode::Loop => {
                    let mut n = 0u64;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                Mode::Memory => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                Mode::Trap => core::arch::wasm32::unreachable(),
                Mode::Panic => panic!("the hostile plugin panics on purpose"),
                Mode::Giant => Ok(vec![Output {
                    port: "out".into(),
                    content: Some(vec![b'x'; config.size]),
                    attributes: Vec::new(),
                    event_time: None,
                }]),
                Mode::Extra | Mode::Missing => Ok(vec![pass()]),
                Mode::BadPort => Ok(vec![Output {
                    port: "nowhere".into(),
                    ..pass()
                }]),
                Mode::Sleep => {
                    std::thread::sleep(std::time::Duration::from_secs(60));
                    Ok(vec![pass()])
                }
                Mode::Fs => match std::fs::read(&config.path) {
                    Ok(bytes) => answer(serde_json::json!({
                        "read": String::from_utf8_lossy(&bytes[..bytes.len().min(64)]),
                    })),
                    Err(e) => Err(format!("cannot read {}: {e}", config.path)),
                },
                Mode::Net => match std::net::TcpStream::connect(&config.addr) {
                    Ok(_) => answer(serde_json::json!({ "connected": config.addr })),
                    Err(e) => Err(format!("cannot connect to {}: {e}", config.addr)),
                },
                Mode::Env => {
                    answer(serde_json::json!({ "value": std::env::var(&config.var).ok() }))
                }
                Mode::Clock => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    answer(serde_json::json!({ "now_ms": now }))
                }
                Mode::Noise => {
                    eprintln!("{}", "noise ".repeat(200_000));
                    for i in 0..10_000 {
                        flow_plugin::log(flow_plugin::Level::Info, &format!("noise {i}"));
                    }
                    Ok(vec![pass()])
                }
            });
        }
        if evil && config.mode == Mode::Extra {
            outcomes.push(Ok(vec![pass()]));
        }
        if evil && config.mode == Mode::Missing {
            outcomes.pop();
        }
        outcomes
    }
}

flow_plugin::bindings::__export_world!(Hostile);
