//! Tests of the flows and flow files, in one binary: each file was its own test binary, and each of those
//! linked the whole dependency tree (150-230 MB apiece in the dev profile; 33 binaries made
//! CI's fresh clone run out of disk). One binary per crate links once.

mod flows;
mod flowtest;
mod provenance;
mod validate;
