//! Tests of the plugin host, in one binary: each file was its own test binary, and each of
//! those linked the whole dependency tree (wasmtime included). One binary links once.

mod common;
mod examples;
mod hostile;
