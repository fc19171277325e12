//! Tests of the flows and flow files, in one binary. Each file was once its own test binary
//! linking the whole dependency tree (150-230 MB apiece in the dev profile); 33 of them made
//! CI's fresh-clone run go out of disk. One binary per crate links once.

mod flows;
mod flowtest;
mod provenance;
mod unsafe_code;
mod validate;
