#!/usr/bin/env bash
# Verify throughput of a bundle read in place as a volume set, against the
# same bundle as one file, in the same run; `sha256sum` of the file is the
# peer that reads every byte once and checks nothing else.
#
#   bash bench/volume-verify.sh [MIB] [VOLUME_SIZE]   # defaults: 1024 MiB, 128M
#
# It builds the release binaries, makes a bundle of MIB MiB of
# incompressible files, cuts it into volumes of VOLUME_SIZE with 10 %
# parity, and times `airlock-build verify` (signature, every chunk and
# file) on the file and on the set, and `airlock-apply check-media` on the
# set. Each timing is the best of three runs with a warm page cache.
set -euo pipefail

mib=${1:-1024}
volume=${2:-128M}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --quiet --release -p airlock-builder -p airlock-applier --bin airlock-build --bin airlock-apply
bin="$repo/target/release"
work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$bin/airlock-build" keygen --out "$work/release" --unencrypted >/dev/null 2>&1
mkdir -p "$work/spec/data"
for i in $(seq 1 $((mib / 64))); do
    head -c $((64 << 20)) /dev/urandom > "$work/spec/data/blob$i.bin"
done
cat > "$work/spec/bundle.toml" <<TOML
name = "bench"
version = "1.0.0"
upgrades_from = "*"

[[tree]]
source = "data"
install_path = "/opt/bench/data"
TOML
bundle=$("$bin/airlock-build" --no-progress build --spec "$work/spec/bundle.toml" \
    --key "$work/release.key" --out "$work/out" 2>/dev/null)
index=$("$bin/airlock-build" split "$bundle" --volume-size "$volume" --parity 10 \
    --out "$work/set" 2>/dev/null)
size=$(stat -c %s "$bundle")
volumes=$(ls "$work/set" | grep -c '\.[0-9]*$')

# Best of three wall-clock runs of "$@", in milliseconds.
best() {
    local best=0
    for _ in 1 2 3; do
        local start end ms
        start=$(date +%s%N)
        "$@" >/dev/null 2>&1
        end=$(date +%s%N)
        ms=$(((end - start) / 1000000))
        if [ "$best" -eq 0 ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
    done
    echo "$best"
}
file_ms=$(best "$bin/airlock-build" verify "$bundle" --trust "$work/release.pub")
set_ms=$(best "$bin/airlock-build" verify "$index" --trust "$work/release.pub")
media_ms=$(best "$bin/airlock-apply" check-media "$work/set")
sum_ms=$(best sha256sum "$bundle")

awk -v size="$size" -v volumes="$volumes" -v vol="$volume" -v f="$file_ms" -v s="$set_ms" \
    -v m="$media_ms" -v p="$sum_ms" 'BEGIN {
    mib = size / 1048576
    printf "bundle: %.0f MiB; set: %d volumes of at most %s + 10%% parity\n", mib, volumes, vol
    printf "sha256sum of the file (peer):        %6d ms  %7.1f MiB/s\n", p, mib / (p / 1000)
    printf "airlock-build verify, one file:      %6d ms  %7.1f MiB/s\n", f, mib / (f / 1000)
    printf "airlock-build verify, volume set:    %6d ms  %7.1f MiB/s\n", s, mib / (s / 1000)
    printf "airlock-apply check-media, the set:  %6d ms  %7.1f MiB/s\n", m, mib / (m / 1000)
    printf "ratio set / file: %.2f; file / sha256sum: %.2f\n", s / f, f / p
}'
