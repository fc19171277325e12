//! Integration tests of the designer, in one binary: each file was its own test binary, and each of those
//! linked the whole dependency tree (150-230 MB apiece in the dev profile; 33 binaries made
//! CI's fresh clone run out of disk). One binary per crate links once.

mod child;
mod common;
mod lineage;
mod live;
mod model;
mod replay;
mod ui;
