//! flow-designer: an egui desktop app that opens, draws, edits, validates and saves flow
//! files.
//!
//! The flow file is the model: the designer edits its text through
//! [`flow_core::spec::document::FlowDocument`] (comments, order and formatting kept, only the
//! touched lines change) and validates it with [`flow_core::spec::load`], the code behind
//! `flow validate`. Everything else is derived from the text after each edit.
//!
//! - [`state`]: the state and every operation (open, save, edit, undo, select, copy,
//!   paste), usable and tested without a window;
//! - [`graph`], [`layout`], [`validation`], [`form`]: what is derived for drawing (nodes,
//!   ports, positions), for checking (findings placed on nodes and fields) and for the
//!   inspector (forms from JSON Schema);
//! - [`views`]: the panels, each a view with `fn ui`;
//! - [`app`]: the window that puts them together;
//! - [`live`]: a running flow's figures over the canvas;
//! - [`session`]: a flow run as a child process (`flow run --api`) or attached to by URL,
//!   watched through its control API off the UI thread.

use std::sync::Arc;

pub mod app;
pub mod form;
pub mod graph;
pub mod layout;
pub mod live;
pub mod session;
pub mod state;
pub mod theme;
pub mod validation;
pub mod views;

pub use app::DesignerApp;
pub use state::Designer;

/// Looks up `${VAR}`s.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> Env {
    Arc::new(|k: &str| std::env::var(k).ok())
}
