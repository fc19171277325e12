//! flow-core: the engine behind `flow`.
//!
//! - [`record`]: what flows (content, attributes, event time, id, parents, acks);
//! - [`ack`]: end-to-end acknowledgement tokens;
//! - [`expr`]: VRL expressions;
pub mod ack;
pub mod expr;
pub mod record;
