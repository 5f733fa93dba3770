//! End-to-end tests: the real `airlock-build` and `airlock-apply` binaries
//! against a real etcd member (Debian `etcd-server`) on 127.0.0.1 and real
//! SQLite files. One test binary for the crate (ripgrep's layout), so it links once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs,
    unreachable_pub
)]

mod cli;
mod cli_build;
mod cluster;
mod demo;
mod field;
mod harness;
mod media;
mod migrations;
mod operator;
mod recovery;
mod refusals;
mod reproducible;
mod single_node;
mod ssh;
mod trees;
mod trust;
