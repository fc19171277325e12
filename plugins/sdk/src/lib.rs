//! Write [flow](../../README.md) plugins in Rust.
//!
//! A plugin is a WebAssembly component of the `flow:plugin@0.1.0` world (`plugins/wit`). This
//! crate hides the world behind three traits, from the simplest up:
//!
//! - [`Filter`]: keep a record or not (ports `matched` and `unmatched`);
//! - [`Map`]: turn a record's JSON into new JSON (port `out`);
//! - [`Plugin`]: anything else: any ports, any number of outputs per input, attributes and
//!   event time.
//!
//! The config arrives deserialised (`type Config`, any `serde` + `schemars` type: its JSON
//! Schema is what the plugin declares, and flow checks a flow's `config:` against it), and a
//! record's JSON is parsed once, on first use.
//!
//! ```ignore
//! use flow_plugin::{Filter, Record, Error};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Config { threshold: f64 }
//!
//! struct Hot(f64);
//!
//! impl Filter for Hot {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, Error> { Ok(Hot(config.threshold)) }
//!     fn keep(&mut self, record: &Record) -> Result<bool, Error> {
//!         Ok(record.json()?["temperature"].as_f64().unwrap_or(0.0) > self.0)
//!     }
//! }
//!
//! flow_plugin::export_filter!(Hot);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the plugin.

// The bindings name this crate by its path, also from inside it.
extern crate self as flow_plugin;

use std::cell::{OnceCell, RefCell};
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "flow:plugin/plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "flow_plugin::bindings",
        runtime_path: "flow_plugin::__wit_bindgen::rt",
    });
}

use bindings::exports::flow::plugin::guest::{Input, Outcome, Output, PluginInfo};
pub use bindings::flow::plugin::host::Level;

pub use schemars::JsonSchema;
pub use serde::Deserialize;
pub use serde_json::{self, Value, json};

/// Why a record (or a config) could not be processed: the record goes to `failure` with this
/// message. Anything that displays converts with `?`.
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// A config for plugins that take none: `config:` must be absent or `{}`.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// A record handed to the plugin.
pub struct Record {
    input: Input,
    json: OnceCell<Result<Value, String>>,
}

impl Record {
    /// A record over `content` (tests).
    pub fn new(content: impl Into<Vec<u8>>) -> Self {
        Self::from_input(Input {
            content: content.into(),
            attributes: Vec::new(),
            event_time: None,
        })
    }

    fn from_input(input: Input) -> Self {
        Self {
            input,
            json: OnceCell::new(),
        }
    }

    /// With an attribute (tests).
    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.input.attributes.push((key.into(), value.into()));
        self
    }

    /// The content bytes.
    pub fn content(&self) -> &[u8] {
        &self.input.content
    }

    /// The content as JSON, parsed on first use.
    pub fn json(&self) -> Result<&Value, Error> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.input.content).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error(format!("content is not valid JSON: {e}")))
    }

    /// The content as JSON, deserialised into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.input.content)
            .map_err(|e| Error(format!("content is not the expected JSON: {e}")))
    }

    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.input
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every attribute, sorted by name.
    pub fn attributes(&self) -> &[(String, String)] {
        &self.input.attributes
    }

    /// Event time in epoch milliseconds, when known.
    pub fn event_time(&self) -> Option<i64> {
        self.input.event_time
    }
}

/// What a plugin makes of one input: outputs, each to a port.
#[derive(Default)]
pub struct Emit {
    outputs: Vec<Output>,
}

/// One output, to add attributes or an event time to.
pub struct Emitted<'a>(&'a mut Output);

impl Emitted<'_> {
    /// Set an attribute on the output.
    pub fn attribute(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.attributes.push((key.into(), value.into()));
        self
    }

    /// Set the output's event time (epoch milliseconds).
    pub fn event_time(self, ms: i64) -> Self {
        self.0.event_time = Some(ms);
        self
    }
}

impl Emit {
    fn push(&mut self, port: &str, content: Option<Vec<u8>>) -> Emitted<'_> {
        self.outputs.push(Output {
            port: port.to_owned(),
            content,
            attributes: Vec::new(),
            event_time: None,
        });
        let last = self.outputs.len() - 1;
        Emitted(&mut self.outputs[last])
    }

    /// Send the input on, unchanged, to `port` (nothing is copied back to the host).
    pub fn pass(&mut self, port: &str) -> Emitted<'_> {
        self.push(port, None)
    }

    /// Send `value`, as JSON, to `port`.
    pub fn json(&mut self, port: &str, value: &impl Serialize) -> Result<Emitted<'_>, Error> {
        let content = serde_json::to_vec(value)?;
        Ok(self.push(port, Some(content)))
    }

    /// Send raw content to `port`.
    pub fn bytes(&mut self, port: &str, content: Vec<u8>) -> Emitted<'_> {
        self.push(port, Some(content))
    }

    /// The outputs so far (tests).
    pub fn outputs(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.outputs
            .iter()
            .map(|o| (o.port.clone(), o.content.clone()))
            .collect()
    }
}

/// Any plugin: ports of its own, any number of outputs per input.
pub trait Plugin: Sized + 'static {
    /// Its config (`config:` in the flow), with the JSON Schema the plugin declares.
    type Config: DeserializeOwned + JsonSchema;
    /// Its output ports, the default one first.
    const OUTPUTS: &'static [&'static str] = &["out"];

    /// Make the plugin from its config; an error refuses the config.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Handle one record: emit what it becomes (nothing drops it on purpose), or fail it.
    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error>;
}

/// A filter: records it keeps go to `matched`, the others to `unmatched`, unchanged.
pub trait Filter: Sized + 'static {
    /// Its config.
    type Config: DeserializeOwned + JsonSchema;
    /// Make the filter from its config.
    fn new(config: Self::Config) -> Result<Self, Error>;
    /// Whether the record goes to `matched`.
    fn keep(&mut self, record: &Record) -> Result<bool, Error>;
}

/// A map: each record's JSON becomes new JSON, on port `out`.
pub trait Map: Sized + 'static {
    /// Its config.
    type Config: DeserializeOwned + JsonSchema;
    /// Make the map from its config.
    fn new(config: Self::Config) -> Result<Self, Error>;
    /// The new JSON of a record.
    fn map(&mut self, value: Value) -> Result<Value, Error>;
}

/// [`Filter`] as a [`Plugin`].
pub struct FilterPlugin<F>(F);

impl<F: Filter> Plugin for FilterPlugin<F> {
    type Config = F::Config;
    const OUTPUTS: &'static [&'static str] = &["matched", "unmatched"];

    fn new(config: Self::Config) -> Result<Self, Error> {
        F::new(config).map(FilterPlugin)
    }

    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error> {
        let port = if self.0.keep(record)? {
            "matched"
        } else {
            "unmatched"
        };
        out.pass(port);
        Ok(())
    }
}

/// [`Map`] as a [`Plugin`].
pub struct MapPlugin<M>(M);

impl<M: Map> Plugin for MapPlugin<M> {
    type Config = M::Config;

    fn new(config: Self::Config) -> Result<Self, Error> {
        M::new(config).map(MapPlugin)
    }

    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error> {
        let value = self.0.map(record.json()?.clone())?;
        out.json("out", &value)?;
        Ok(())
    }
}

/// Log a line through the flow's log.
pub fn log(level: Level, message: &str) {
    bindings::flow::plugin::host::log(level, message);
}

/// What [`export_plugin!`] fills in from the plugin crate's `Cargo.toml`.
#[doc(hidden)]
pub trait Export {
    type Plugin: Plugin;
    const NAME: &'static str;
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
}

/// The running plugin, behind the world's functions.
trait Erased {
    fn process(&mut self, batch: Vec<Input>) -> Vec<Outcome>;
}

impl<P: Plugin> Erased for P {
    fn process(&mut self, batch: Vec<Input>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|input| {
                let record = Record::from_input(input);
                let mut out = Emit::default();
                match Plugin::process(self, &record, &mut out) {
                    Ok(()) => Ok(out.outputs),
                    Err(e) => Err(e.0),
                }
            })
            .collect()
    }
}

thread_local! {
    static RUNNING: RefCell<Option<Box<dyn Erased>>> = const { RefCell::new(None) };
}

impl<E: Export> bindings::exports::flow::plugin::guest::Guest for E {
    fn describe() -> PluginInfo {
        let schema = schemars::schema_for!(<E::Plugin as Plugin>::Config);
        PluginInfo {
            name: E::NAME.to_owned(),
            version: E::VERSION.to_owned(),
            description: E::DESCRIPTION.to_owned(),
            outputs: <E::Plugin as Plugin>::OUTPUTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            config_schema: serde_json::to_string(&schema).unwrap_or_default(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        let config: <E::Plugin as Plugin>::Config =
            serde_json::from_str(&config).map_err(|e| format!("invalid config: {e}"))?;
        let plugin = E::Plugin::new(config).map_err(|e| e.0)?;
        RUNNING.with(|r| *r.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    fn process(batch: Vec<Input>) -> Vec<Outcome> {
        RUNNING.with(|r| match r.borrow_mut().as_mut() {
            Some(p) => p.process(batch),
            None => batch
                .iter()
                .map(|_| Err("the plugin was not initialised".to_owned()))
                .collect(),
        })
    }
}

/// Export a [`Plugin`] as the component's `flow:plugin/guest`. Its name, version and
/// description are the crate's (`Cargo.toml`).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __FlowPluginExport;
        impl $crate::Export for __FlowPluginExport {
            type Plugin = $plugin;
            const NAME: &'static str = env!("CARGO_PKG_NAME");
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            const DESCRIPTION: &'static str = env!("CARGO_PKG_DESCRIPTION");
        }
        $crate::bindings::__export_world!(__FlowPluginExport);
    };
}

/// Export a [`Filter`].
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        $crate::export_plugin!($crate::FilterPlugin<$filter>);
    };
}

/// Export a [`Map`].
#[macro_export]
macro_rules! export_map {
    ($map:ty) => {
        $crate::export_plugin!($crate::MapPlugin<$map>);
    };
}

/// Run a plugin over records without the host (unit tests of plugins, natively).
pub fn run<P: Plugin>(
    plugin: &mut P,
    record: &Record,
) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
    let mut out = Emit::default();
    plugin.process(record, &mut out)?;
    Ok(out.outputs())
}
