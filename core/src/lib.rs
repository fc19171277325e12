//! flow-core: the engine behind `flow`.
//!
//! - [`record`]: what flows (content, attributes, event time, id, parents, acks);
//! - [`ack`]: end-to-end acknowledgement tokens;
//! - [`expr`]: VRL expressions;
//! - [`document`]: the flow file as an editable document (the designer's model);
//! - [`processor`]: the processor contract and the registry type;
//! - [`spec`]: the flow file, its validation and its JSON Schema;
//! - [`graph`]: drawing a flow (DOT, Mermaid);
//! - [`runtime`]: tasks, bounded edges, back-pressure, shutdown.
pub mod ack;
pub mod document;
pub mod expr;
pub mod graph;
pub mod processor;
pub mod record;
pub mod runtime;
pub mod spec;
