#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the end-to-end tests, which
# start real etcd members and a real sshd on 127.0.0.1. Installs etcd and
# OpenSSH from Debian's packages when they are missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/bin/time ] || need+=(time)
# The trust tests check exported signatures with minisign itself and set the
# clock ahead with libfaketime.
command -v minisign >/dev/null 2>&1 || need+=(minisign)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
# A hook in the backup tests writes to a database between the pre-copy and the stop.
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
# diesel, in tests/migrators, links the system's SQLite as its `sqlite` feature does.
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi

# The end-to-end tests run the binaries of the other crates: build them first.
# The crash tests also stop airlock-apply between a journal row and its
# action, with a second build that has fail points compiled in (the applier's
# `failpoints` feature; docs/ARCHITECTURE.md, "Fail points"). It is copied
# aside before the normal build replaces target/debug/airlock-apply.
cargo build -p airlock-applier --bin airlock-apply --features failpoints
cp target/debug/airlock-apply target/debug/airlock-apply-failpoints
cargo build --workspace --bins
# The real diesel and sqlx migrators the migration tests compare airlock
# with: projects of their own (tests/migrators/README.md).
for tool in diesel sqlx; do
    CARGO_TARGET_DIR=tests/migrators/target \
        cargo build --release --locked --manifest-path "tests/migrators/$tool/Cargo.toml"
done
# The fuzz targets (fuzz/README.md) run over their seed corpus, their
# regressions and mutations of the seeds in tests/tests/fuzz_corpus.rs, on
# stable Rust; `fuzz/run.sh SECONDS` fuzzes them with cargo-fuzz on nightly.
cargo test --workspace
