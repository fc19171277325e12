//! Integration tests of the `flow` binary, in one binary. Each file was once its own test binary
//! linking the whole dependency tree (150-230 MB apiece in the dev profile); 33 of them made
//! CI's fresh-clone run go out of disk. One binary per crate links once.

mod api;
mod chaos;
mod cli;
mod common;
mod exhaustion;
mod http;
mod kafka;
mod mqtt;
mod outages;
mod output;
mod plugins;
mod secrets;
mod send;
mod sinks;
mod test_cmd;
