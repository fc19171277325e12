//! flow-wasm: the `wasm` processor, which runs WebAssembly component plugins.
//!
//! The contract is the WIT world `flow:plugin@0.1.0` (`plugins/wit/plugin.wit`): a plugin
//! describes itself (name, version, output ports, the JSON Schema of its config), takes its
//! config once, and transforms batches of records, answering for each input its outputs or an
//! error. This crate is the host side:
//!
//! - [`world`]: what a component file declares, read without compiling it (is it a component,
//!   which world version, what it imports);
//! - [`engine`]: the one wasmtime engine of the process, its epoch ticker and the disk cache of
//!   compiled components;
//! - [`module`]: a plugin file loaded, described and ready to instantiate;
//! - [`sandbox`]: an instance with its limits (deadline, memory, tables, output size) and its
//!   grants (WASI denies everything unless the flow lends it);
//! - [`config`]: the `wasm` processor's config, validation and build; [`processor`]: the
//!   running processor (a thread per processor, hot reload).
//!
//! Why a crate of its own: wasmtime and cranelift are the heaviest dependencies of flow. Kept
//! here, flow-core stays free of them; `flow-processors` lists the `wasm` processor in its
//! registry like any other, so `flow run` (headless) runs plugins.

mod bindings;
pub mod config;
pub mod engine;
pub mod module;
pub mod processor;
pub mod sandbox;
pub mod world;

pub use bindings::{Input, Level, Outcome, Output, PluginInfo};
pub use config::{WasmConfig, definition};
pub use module::Module;
pub use sandbox::{CallError, DirGrant, FlowTime, Grants, Instance, Limits};

use std::path::PathBuf;

/// Loading a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not WebAssembly.
    #[error("not a WebAssembly component: {0}")]
    NotWasm(String),
    /// The file is a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build it with `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component does not export the plugin interface.
    #[error(
        "the component does not export `{}`: it is not a flow plugin (it exports: {exports})",
        world::GUEST
    )]
    NotAPlugin {
        /// What it exports.
        exports: String,
    },
    /// The component was built for a world version this host does not run.
    #[error(
        "the plugin was built for flow:plugin@{found}, and this flow runs flow:plugin@{} plugins: rebuild it against this flow's plugins/wit",
        world::WORLD_VERSION
    )]
    WorldVersion {
        /// The version it exports.
        found: String,
    },
    /// The engine could not be made.
    #[error("the WebAssembly engine could not start: {0}")]
    Engine(String),
    /// Compiling the component failed.
    #[error("compiling the plugin failed: {0}")]
    Compile(String),
    /// The component imports something flow does not provide.
    #[error("the plugin cannot be linked: {0}")]
    Link(String),
    /// Asking the plugin to describe itself failed.
    #[error("the plugin could not describe itself: {0}")]
    Describe(CallError),
    /// The description breaks the contract.
    #[error("the plugin's description is invalid: {0}")]
    Info(String),
    /// The config schema the plugin declares is not a JSON Schema.
    #[error("the plugin's config schema is invalid: {0}")]
    Schema(String),
}
