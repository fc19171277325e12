//! `wasm`: the config of the plugin processor, its validation and its build.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytesize::ByteSize;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Processor, ProcessorConfig, ProcessorDef,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::module::Module;
use crate::processor::WasmProcessor;
use crate::sandbox::{DirGrant, FlowTime, Grants, Instance, Limits};

/// Run a WebAssembly plugin (a component of the `flow:plugin@0.1` world) on every record.
///
/// The plugin declares its output ports and the JSON Schema of its `config`; `flow validate`
/// reads both from the file. Records go to the plugin in batches; for each input it answers
/// the records it makes (each to one of its ports) or an error (the record goes to `failure`
/// with the plugin's message). A call that traps, runs past `limits.deadline`, exceeds
/// `limits.memory` or answers malformed results sends its whole batch to `failure`; the
/// instance is then discarded and a fresh one made, and the flow goes on. The plugin reaches
/// nothing outside (files, network, environment, clocks) unless `grants` lends it. When the
/// module file changes, new batches use the new version; a version that fails to load is
/// refused and logged, and the running one goes on. See docs/plugins.md.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The plugin: a `.wasm` component file (built with `cargo build --target
    /// wasm32-wasip2`, or `componentize-py`).
    pub module: PathBuf,
    /// The plugin's own settings, checked against the schema it declares (`flow plugin
    /// inspect` prints it).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: PluginConfig,
    /// What bounds each call: `deadline` (default `1s`), `memory` (all linear memory, default
    /// `64MiB`), `max_output_bytes` (default `16MiB`). Crossing one fails the call's batch.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// What the plugin may reach outside its sandbox, nothing by default: `env` (variable
    /// names), `dirs` (`{ host, guest, writable }`), `network` and `clock` (booleans).
    #[serde(default)]
    pub grants: GrantsConfig,
    /// Records per call at most: larger batches are split (a call's deadline covers one
    /// call).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How often the module file is checked for a new version (`0s`: never).
    #[serde(default = "default_watch", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub watch: Duration,
    #[serde(skip)]
    #[schemars(skip)]
    loaded: OnceLock<Result<Arc<Module>, String>>,
}

fn default_max_batch() -> usize {
    1024
}

fn default_watch() -> Duration {
    Duration::from_secs(1)
}

/// The plugin's `config:`, as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginConfig(pub serde_json::Value);

impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // From YAML every scalar arrives as a string here; [`definition`] types them from the
        // YAML itself afterwards.
        serde_json::Value::deserialize(d).map(PluginConfig)
    }
}

/// Limits of one plugin instance.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// How long one call may run before it is stopped and its batch goes to `failure`
    /// (default `1s`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<Duration>,
    /// Linear memory of the instance, all memories together, like `64MiB` (the default).
    #[schemars(with = "Option<String>")]
    pub memory: Option<ByteSize>,
    /// The most one call may answer: contents, attributes and ports (default `16MiB`).
    #[schemars(with = "Option<String>")]
    pub max_output_bytes: Option<ByteSize>,
}

/// What a plugin may reach outside its sandbox.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Environment variables the plugin may read, by name; their values come from flow's
    /// environment (absent ones stay absent).
    #[serde(default)]
    pub env: Vec<String>,
    /// Host directories the plugin may read (or write, with `writable: true`).
    #[serde(default)]
    pub dirs: Vec<DirGrantConfig>,
    /// TCP, UDP and name lookups to any address (default false).
    #[serde(default)]
    pub network: bool,
    /// The clocks (default false: the plugin reads the Unix epoch, so its output depends only
    /// on its input). The wall clock reads the flow's processing time when the batch was handed
    /// over (in `flow test`, the test's clock); the monotonic clock is the real one.
    #[serde(default)]
    pub clock: bool,
}

/// A host directory lent to a plugin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirGrantConfig {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, like `/data`.
    pub guest: String,
    /// Whether the plugin may create, change and delete files in it (default false).
    #[serde(default)]
    pub writable: bool,
}

impl Describe for WasmConfig {
    const TYPE: &'static str = "wasm";
    const KIND: Kind = Kind::Transform;
}

/// The registry entry of `wasm`: [`ProcessorDef::of`], except that `config:` keeps the types
/// YAML gives its scalars (`20` a number, `"20"` a string, `true` a boolean), which serde's
/// view of YAML through `marked_yaml` flattens into strings.
pub fn definition() -> ProcessorDef {
    fn parse(
        node: &marked_yaml::Node,
    ) -> Result<Box<dyn ProcessorConfig>, marked_yaml::FromNodeError> {
        let mut c: WasmConfig = marked_yaml::from_node(node)?;
        if let Some(config) = node.as_mapping().and_then(|m| m.get_node("config")) {
            c.config = PluginConfig(yaml_to_json(config));
        }
        Ok(Box::new(c))
    }
    ProcessorDef {
        parse,
        ..ProcessorDef::of::<WasmConfig>()
    }
}

/// YAML to JSON with YAML 1.2's core schema for plain scalars: `null`/`~`/empty, booleans,
/// integers and floats; quoted scalars stay strings.
pub fn yaml_to_json(node: &marked_yaml::Node) -> serde_json::Value {
    use marked_yaml::Node;
    use serde_json::Value;
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return Value::String(text.to_owned());
            }
            match text {
                "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
                "true" | "True" | "TRUE" => return Value::Bool(true),
                "false" | "False" | "FALSE" => return Value::Bool(false),
                _ => {}
            }
            let numeric = text
                .trim_start_matches(['-', '+'])
                .starts_with(|c: char| c.is_ascii_digit() || c == '.');
            if numeric {
                if let Ok(i) = text.parse::<i64>() {
                    return Value::from(i);
                }
                if let Ok(u) = text.parse::<u64>() {
                    return Value::from(u);
                }
                if let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    return Value::Number(n);
                }
            }
            Value::String(text.to_owned())
        }
        Node::Sequence(seq) => Value::Array(seq.iter().map(yaml_to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), yaml_to_json(v)))
                .collect(),
        ),
    }
}

impl WasmConfig {
    /// A config for `module` with defaults everywhere else (tests, tools).
    pub fn new(module: impl Into<PathBuf>, config: serde_json::Value) -> Self {
        Self {
            module: module.into(),
            config: PluginConfig(config),
            limits: LimitsConfig::default(),
            grants: GrantsConfig::default(),
            max_batch: default_max_batch(),
            watch: default_watch(),
            loaded: OnceLock::new(),
        }
    }

    /// The limits, defaults filled in.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        let bytes = |b: Option<ByteSize>, default: usize| {
            b.map_or(default, |b| {
                usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
            })
        };
        Limits {
            deadline: self.limits.deadline.unwrap_or(d.deadline),
            memory: bytes(self.limits.memory, d.memory),
            max_output_bytes: bytes(self.limits.max_output_bytes, d.max_output_bytes),
        }
    }

    /// The grants, with the environment's values.
    pub fn grants(&self) -> Grants {
        Grants {
            env: self
                .grants
                .env
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                .collect(),
            dirs: self
                .grants
                .dirs
                .iter()
                .map(|d| DirGrant {
                    host: d.host.clone(),
                    guest: d.guest.clone(),
                    writable: d.writable,
                })
                .collect(),
            network: self.grants.network,
            clock: self.grants.clock,
            time: FlowTime::default(),
        }
    }

    /// The plugin, loaded once (validation, ports and build share it).
    pub fn module(&self) -> Result<Arc<Module>, String> {
        self.loaded
            .get_or_init(|| Module::load(&self.module, &self.limits()).map_err(|e| e.to_string()))
            .clone()
    }

    /// The plugin's config: an absent `config:` is `{}`.
    fn config_value(&self) -> serde_json::Value {
        match &self.config.0 {
            serde_json::Value::Null => serde_json::json!({}),
            v => v.clone(),
        }
    }

    /// The plugin's config as the JSON text `init` takes.
    fn config_text(&self) -> String {
        self.config_value().to_string()
    }
}

impl ProcessorConfig for WasmConfig {
    /// The plugin's own ports (none when it cannot be loaded: `validate` says why).
    fn outputs(&self) -> Vec<String> {
        self.module()
            .map(|m| m.info.outputs.clone())
            .unwrap_or_default()
    }

    /// Reads the plugin file (its world version, its description); runs none of its code but
    /// `describe`, sandboxed with nothing granted.
    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.max_batch == 0 {
            errors.push(ConfigError::new(&["max_batch"], "must be at least 1"));
        }
        if self.limits.deadline.is_some_and(|d| d.is_zero()) {
            errors.push(ConfigError::new(
                &["limits", "deadline"],
                "must be more than 0s",
            ));
        }
        if self.limits.memory.is_some_and(|m| m.as_u64() < 1 << 20) {
            errors.push(ConfigError::new(
                &["limits", "memory"],
                "must be at least 1MiB",
            ));
        }
        for (i, d) in self.grants.dirs.iter().enumerate() {
            if !d.guest.starts_with('/') {
                let mut e = ConfigError::new(
                    &["grants", "dirs"],
                    format!("dirs[{i}].guest `{}` is not an absolute path", d.guest),
                );
                e.help = Some("write where the plugin sees it, like `/data`".into());
                errors.push(e);
            }
        }
        match self.module() {
            Err(e) => {
                let mut err = ConfigError::new(&["module"], e);
                err.help = Some("`flow plugin inspect FILE` shows what a plugin declares".into());
                errors.push(err);
            }
            Ok(m) => {
                for (path, message) in m.check_config(&self.config_value()) {
                    let mut full = vec!["config".to_owned()];
                    full.extend(path);
                    errors.push(ConfigError {
                        path: full,
                        offset: None,
                        message: format!("{message} (the schema of plugin `{}`)", m.info.name),
                        help: Some("`flow plugin inspect FILE` prints the plugin's schema".into()),
                    });
                }
            }
        }
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let module = self.module().map_err(BuildError)?;
        let limits = self.limits();
        let grants = self.grants();
        grants.time.set(ctx.clock.now_ms());
        let config = self.config_text();
        // A config the plugin refuses stops the flow before it starts.
        let mut instance = Instance::new(&module, &limits, &grants, ctx.name.as_str().into())
            .map_err(|e| BuildError(e.to_string()))?;
        match instance.init(&config) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                return Err(BuildError(format!(
                    "plugin `{}` refused its config: {msg}",
                    module.info.name
                )));
            }
            Err(e) => return Err(BuildError(e.to_string())),
        }
        Ok(Processor::Task(Box::new(
            WasmProcessor::new(
                module,
                instance,
                limits,
                grants,
                config,
                self.max_batch,
                self.watch,
            )
            .with_clock(ctx.clock.clone()),
        )))
    }
}
