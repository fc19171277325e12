//! flow-core: the engine behind `flow`.
//!
//! - [`record`]: what flows (content, attributes, event time, id, parents, acks);
//! - [`ack`]: end-to-end acknowledgement tokens;
//! - [`clock`]: processing time, which `flow test` drives;
//! - [`expr`]: VRL expressions;
//! - [`processor`]: the processor contract and the registry type;
//! - [`spec`]: the flow file: its editable document (the designer's model), its validation
//!   and its JSON Schema;
//! - [`graph`]: drawing a flow (DOT, Mermaid);
//! - [`retry`]: how sinks retry an unavailable destination;
//! - [`runtime`]: tasks, bounded edges, back-pressure, shutdown;
//! - [`provenance`]: what happened to every record, recorded by the runtime, its store and
//!   queries;
//! - [`flowtest`]: `flow test`, unit tests for flows (records in at a node, expectations on
//!   ports, a virtual clock);
//! - [`observe`]: what a running flow shows the outside (the control API's types).
pub mod ack;
pub mod clock;
pub mod committed;
pub mod expr;
pub mod flowtest;
pub mod graph;
pub mod observe;
pub mod prefetch;
pub mod processor;
pub mod provenance;
pub mod record;
pub mod retry;
pub mod runtime;
pub mod spec;
