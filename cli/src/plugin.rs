//! `flow plugin`: start a plugin crate, and show what a plugin file declares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};

/// `flow plugin ...`
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Make a new plugin crate NAME (a Rust filter to start from) that builds with
    /// `cargo build --release --target wasm32-wasip2`.
    New {
        /// The crate's name (lowercase letters, digits, `-` and `_`).
        name: String,
        /// Where to make it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print what a plugin file declares: name, version, ports, config schema, world version,
    /// and which WASI interfaces it imports (what it could ask a flow to grant).
    Inspect {
        /// The plugin, a `.wasm` component.
        file: PathBuf,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t = InspectFormat::Text)]
        format: InspectFormat,
    },
}

/// Output of `flow plugin inspect`.
#[derive(Clone, Copy, ValueEnum)]
pub enum InspectFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

/// Run a `flow plugin` command.
pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir } => {
            let path = new(&name, &dir)?;
            println!("made {}", path.display());
            println!(
                "build it: cd {} && cargo build --release --target wasm32-wasip2",
                path.display()
            );
            println!(
                "the plugin: target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            );
            Ok(())
        }
        PluginCommand::Inspect { file, format } => inspect(&file, format),
    }
}

// The SDK and the world are embedded, so a plugin made by this `flow` speaks its world.
const SDK_CARGO: &str = include_str!("../../plugins/sdk/Cargo.toml");
const SDK_LIB: &str = include_str!("../../plugins/sdk/src/lib.rs");
const WIT: &str = include_str!("../../plugins/wit/plugin.wit");
// Versions the examples are built and tested with.
const LOCK: &str = include_str!("../../plugins/examples/Cargo.lock");

/// Make the crate `dir/name`; returns its path.
pub fn new(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a crate name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let files = [
        ("Cargo.toml", cargo_toml(name)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (".gitignore", "/target\n".to_owned()),
        ("Cargo.lock", LOCK.to_owned()),
        ("flow/sdk/Cargo.toml", SDK_CARGO.to_owned()),
        ("flow/sdk/src/lib.rs", SDK_LIB.to_owned()),
        ("flow/wit/plugin.wit", WIT.to_owned()),
    ];
    for (file, text) in files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "a flow plugin"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The guest SDK and the plugin world (flow:plugin@{world}) of the flow that made this crate.
flow-plugin = {{ path = "flow/sdk" }}
serde = {{ version = "1", features = ["derive"] }}
schemars = {{ version = "1", default-features = false, features = ["derive", "std"] }}

[profile.release]
lto = true
codegen-units = 1
strip = true

# A workspace of its own, wherever it is made.
[workspace]
"#,
        world = flow_wasm::world::WORLD_VERSION,
    )
}

const LIB_RS: &str = r#"//! {name}: a flow plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`, then use
//! `target/wasm32-wasip2/release/<name>.wasm` in a flow:
//!
//! ```yaml
//! processors:
//!   hot:
//!     type: wasm
//!     module: target/wasm32-wasip2/release/<name>.wasm
//!     config: { field: temperature, above: 95 }
//! connections:
//!   - source -> hot
//!   - hot.matched -> sink
//! ```

use flow_plugin::{Error, Filter, Record};

/// The plugin's `config:`. Its JSON Schema (from the doc comments) is what the plugin
/// declares, and `flow validate` checks flows against it.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The numeric field to test (default `temperature`).
    #[serde(default = "default_field")]
    pub field: String,
    /// Records whose field is above this go to `matched`, the others to `unmatched`.
    pub above: f64,
}

fn default_field() -> String {
    "temperature".into()
}

pub struct Above(Config);

impl Filter for Above {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Above(config))
    }

    fn keep(&mut self, record: &Record) -> Result<bool, Error> {
        let value = record.json()?.get(&self.0.field).and_then(|v| v.as_f64());
        match value {
            Some(v) => Ok(v > self.0.above),
            None => Err(Error::new(format!("no numeric `{}`", self.0.field))),
        }
    }
}

flow_plugin::export_filter!(Above);
"#;

/// Print what `file` declares.
pub fn inspect(file: &Path, format: InspectFormat) -> anyhow::Result<()> {
    // Generous limits: this only asks the plugin to describe itself, sandboxed.
    let limits = flow_wasm::Limits {
        deadline: Duration::from_secs(10),
        memory: 1 << 30,
        ..flow_wasm::Limits::default()
    };
    let module = flow_wasm::Module::load(file, &limits)?;
    let info = &module.info;
    let schema: serde_json::Value = if info.config_schema.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&info.config_schema).unwrap_or(serde_json::Value::Null)
    };
    match format {
        InspectFormat::Json => {
            let v = serde_json::json!({
                "file": file.display().to_string(),
                "size": module.size,
                "sha256": module.hash,
                "world": format!("flow:plugin@{}", module.outline.world_version),
                "name": info.name,
                "version": info.version,
                "description": info.description,
                "outputs": info.outputs,
                "config_schema": schema,
                "imports": module.outline.imports,
                "exports": module.outline.exports,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        InspectFormat::Text => {
            println!("plugin   {} {}", info.name, info.version);
            if !info.description.is_empty() {
                println!("         {}", info.description);
            }
            println!(
                "file     {} ({} bytes, sha256 {})",
                file.display(),
                module.size,
                module.hash
            );
            println!(
                "world    flow:plugin@{} (this flow runs {})",
                module.outline.world_version,
                flow_wasm::world::WORLD_VERSION
            );
            let mut ports: Vec<String> = info.outputs.clone();
            if let Some(first) = ports.first_mut() {
                first.push_str(" (default)");
            }
            ports.push("failure".into());
            println!("ports    {}", ports.join(", "));
            println!("imports");
            for i in &module.outline.imports {
                match grant_for(i) {
                    Some(g) => println!("  {i}  (needs `grants.{g}` to do anything)"),
                    None => println!("  {i}"),
                }
            }
            if schema.is_null() {
                println!("config   any (no schema)");
            } else {
                println!("config schema");
                for line in serde_json::to_string_pretty(&schema)?.lines() {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(())
}

/// Which grant makes an imported WASI interface do something.
fn grant_for(import: &str) -> Option<&'static str> {
    if import.starts_with("wasi:filesystem/") {
        Some("dirs")
    } else if import.starts_with("wasi:sockets/") {
        Some("network")
    } else if import.starts_with("wasi:cli/environment") {
        Some("env")
    } else if import.starts_with("wasi:clocks/") {
        Some("clock")
    } else {
        None
    }
}
