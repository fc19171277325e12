//! flow-processors: the processors `flow` ships with, and the registry that lists them.
//!
//! One processor per file: a config struct (serde + JSON Schema, a doc comment on every field,
//! which becomes the reference docs) that implements [`flow_core::processor::ProcessorConfig`]
//! and [`flow_core::processor::Describe`], and the running processor it builds. Every built-in
//! is listed in [`registry::builtin`], so a reader finds them all in one place.
//!
//! - sources: [`generate`], [`file`], [`stdin`], [`mqtt`] (`mqtt_source`), [`http`] (`http_poll`,
//!   `http_server`);
//! - transforms: [`filter`], [`route`], [`remap`];
//! - sinks: [`file_sink`], [`stdout`], [`mqtt`] (`mqtt_sink`), [`influxdb`] (`influxdb_sink`),
//!   [`s3`] (`s3_sink`).

pub mod file;
pub mod file_sink;
pub mod filter;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod http;
mod http_client;
pub mod influxdb;
pub mod kafka;
pub mod lines;
pub mod mqtt;
mod record_size;
pub mod registry;
pub mod remap;
pub mod route;
pub mod s3;
pub mod stdin;
pub mod stdout;
mod template;
pub mod window;
mod write;

#[cfg(test)]
mod http_test;
#[cfg(test)]
mod testing;

pub use registry::builtin;
