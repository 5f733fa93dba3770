#!/usr/bin/env bash
# How long the service is down when a release replaces a large folder tree:
# airlock's install by rename (docs/SITE.md, "Installing files and trees")
# against the copy a copy-based install makes while the service is down,
# measured as `cp -a` of the same tree, in the same run.
#
#   bash bench/tree-install.sh [MIB]      # default 200 MiB in 512 KiB files
#
# It builds the release binaries, sets up a throwaway demo site (service on
# 127.0.0.1:18432), applies a 1.1.0 and then a 1.2.0 that both carry the
# tree, and reads the 1.2.0 apply's `--json` events: the downtime is from
# the `stop` step's start to the `health` step's end, the tree's install is
# its `install tree` step.
set -euo pipefail

mib=${1:-200}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --quiet --release -p airlock-builder -p airlock-applier -p airlock-tests \
    --bin airlock-build --bin airlock-apply --bin airlock-demo-service
bin="$repo/target/release"
port=18432
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "bench: something already listens on 127.0.0.1:$port; stop it first" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench.XXXXXX")
cleanup() {
    if [ -f "$work/site/node/pid" ]; then kill "$(cat "$work/site/node/pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The release: the demo's, with a tree of MIB MiB of incompressible files
# in 20 folders instead of its small static tree.
"$bin/airlock-build" keygen --out "$work/release" --unencrypted >/dev/null
cp -r examples/demo "$work/spec"
mkdir -p "$work/spec/bin"
cp "$bin/airlock-demo-service" "$work/spec/bin/"
rm -rf "$work/spec/static"
files=$((mib * 2))
for i in $(seq 0 $((files - 1))); do
    dir="$work/spec/static/part$((i % 20))"
    mkdir -p "$dir"
    head -c 524288 /dev/urandom > "$dir/blob$i.bin"
done
build() {
    sed -i "s/^version = .*/version = \"$1\"/; s/^upgrades_from = .*/upgrades_from = \"*\"/" "$work/spec/bundle.toml"
    echo "$1" > "$work/spec/RELEASE"
    "$bin/airlock-build" --no-progress build --spec "$work/spec/bundle.toml" \
        --key "$work/release.key" --out "$work/out" >/dev/null
}
build 1.1.0
build 1.2.0

# The site: the demo's profile on another port.
site="$work/site"
mkdir -p "$site/node/bin" "$site/keys"
sed "s/18431/$port/g" examples/demo/site/site.toml > "$site/site.toml"
cp "$work/release.pub" "$site/keys/"
cp "$bin/airlock-demo-service" "$site/node/bin/demo-service"
echo "1.0.0" > "$site/node/RELEASE"
echo "healthy = true" > "$site/node/service.conf"
cd "$site"
nohup node/bin/demo-service --listen 127.0.0.1:$port --release-file node/RELEASE \
    --config node/service.conf --static node/static > node/service.log 2>&1 &
echo $! > node/pid
cd "$repo"
sleep 0.5
"$bin/airlock-apply" apply "$work/out/demo-1.1.0.airlock" --site "$site/site.toml" 2>/dev/null
"$bin/airlock-apply" --json apply "$work/out/demo-1.2.0.airlock" --site "$site/site.toml" \
    > "$work/events.jsonl" 2>/dev/null

# elapsed_ms of the event with this step and status.
at() {
    grep "\"step\":\"$1\"" "$work/events.jsonl" | grep "\"status\":\"$2\"" | head -1 |
        sed 's/.*"elapsed_ms":\([0-9]*\).*/\1/'
}
down=$(($(at health ok) - $(at stop start)))
tree=$(($(at "install tree" ok) - $(at "install tree" start)))

# The peer: the copy a copy-based install makes while the service is down.
start=$(date +%s%N)
cp -a "$site/node/static" "$work/copy"
sync -f "$work/copy"
copy=$((($(date +%s%N) - start) / 1000000))

awk -v mib="$mib" -v files="$files" -v down="$down" -v tree="$tree" -v copy="$copy" 'BEGIN {
    printf "tree: %d MiB in %d files\n", mib, files
    printf "airlock install tree (rename):   %6d ms\n", tree
    printf "cp -a of the same tree (+ sync): %6d ms\n", copy
    printf "ratio cp -a / rename:            %6.0fx\n", copy / (tree > 0 ? tree : 1)
    printf "service down with airlock:       %6d ms (stop to healthy)\n", down
    printf "service down with a copy-based install, estimated (airlock - rename + cp -a): %d ms, %.1fx longer\n",
        down - tree + copy, (down - tree + copy) / (down > 0 ? down : 1)
}'
