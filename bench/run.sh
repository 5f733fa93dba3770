#!/usr/bin/env bash
# airlock's speed side by side with the tools people use today, in the same
# run, interleaved (bench/README.md says what each line measures).
#
#   bash bench/run.sh                 # the real run: 600 MiB of binaries and a
#                                     # 1 GiB file; a node with a 1 GiB Raft
#                                     # folder and a 270 MiB SQLite database
#   bash bench/run.sh --smoke         # a tiny payload, one round (CI runs it)
#   bash bench/run.sh --rounds 5      # more rounds (default 3; medians)
#   BIN_MIB=.. BIG_MIB=.. RAFT_MIB=.. DB_MIB=.. bash bench/run.sh   # other sizes
#
# It installs the Debian peers it needs (zstd, minisign, mender-artifact,
# rsync, sqlite3, curl, time, openssl), builds the release binaries, and
# prints medians, same-run ratios and peak memory. The demo service of the
# tests serves the node on 127.0.0.1:18433.
set -euo pipefail

smoke=0
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) smoke=1 rounds=1 ;;
    --rounds) rounds=$2; shift ;;
    *) echo "usage: bench/run.sh [--smoke] [--rounds N]" >&2; exit 2 ;;
    esac
    shift
done
if [ $smoke = 1 ]; then
    : "${BIN_MIB:=8}" "${BIG_MIB:=4}" "${RAFT_MIB:=8}" "${DB_MIB:=2}"
else
    : "${BIN_MIB:=600}" "${BIG_MIB:=1024}" "${RAFT_MIB:=1024}" "${DB_MIB:=270}"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

need=()
for tool in zstd:zstd minisign:minisign mender-artifact:mender-artifact rsync:rsync \
    sqlite3:sqlite3 curl:curl openssl:openssl etcd:etcd-server etcdctl:etcd-client; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --quiet --release -p airlock-builder -p airlock-applier -p airlock-tests \
    --bin airlock-build --bin airlock-apply --bin airlock-demo-service
bin="$repo/target/release"
port=18433
# The rolling upgrade's etcd members listen on 127.0.0.1:2379N (clients)
# and :2380N (peers), N = 1..3.
client_base=23790 peer_base=23800
for p in $port $((client_base + 1)) $((client_base + 2)) $((client_base + 3)) \
    $((peer_base + 1)) $((peer_base + 2)) $((peer_base + 3)); do
    if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
        echo "bench: something already listens on 127.0.0.1:$p; stop it first" >&2
        exit 1
    fi
done
work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench.XXXXXX")
site="$work/site"
cleanup() {
    (cd "$site" 2>/dev/null && sh -c "$stop_cmd" 2>/dev/null) || true
    for m in 1 2 3; do (cd "$work/cluster/n$m" 2>/dev/null && ./stop.sh 2>/dev/null) || true; done
    [ -z "${writer_pid:-}" ] || kill "$writer_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
results="$work/results"
: > "$results"

# Times a command: appends "NAME SECONDS PEAK_KIB" to the results.
measure() {
    local name=$1
    shift
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || {
        echo "bench: $name failed:" >&2
        cat "$work/stderr" >&2
        exit 1
    }
    t1=$(date +%s%N)
    echo "$name $(awk -v ns=$((t1 - t0)) 'BEGIN{printf "%.3f", ns / 1e9}') $(cat "$work/time")" >> "$results"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The release: real binaries and libraries, a large file, the demo service.
echo "bench: making the payload and the node (${BIN_MIB} MiB + ${BIG_MIB} MiB; Raft ${RAFT_MIB} MiB, SQLite ${DB_MIB} MiB)"
spec="$work/spec"
python3 bench/make_node.py payload "$spec" "$BIN_MIB" "$BIG_MIB"
mkdir -p "$spec/bin"
cp "$bin/airlock-demo-service" "$spec/bin/"
cat > "$spec/bundle.toml" <<'TOML'
name = "bench"
version = "1.0.0"
upgrades_from = "*"

[[binary]]
name = "demo-service"
source = "bin/airlock-demo-service"
install_path = "/opt/bench/bin/demo-service"

[[file]]
source = "RELEASE"
install_path = "/opt/bench/RELEASE"

[[file]]
source = "data/big.bin"
install_path = "/opt/bench/big.bin"

[[tree]]
source = "lib"
install_path = "/opt/bench/lib"
TOML
"$bin/airlock-build" keygen --out "$work/release" --unencrypted >/dev/null 2>&1
# The shell pipeline's and mender-artifact's own keys.
minisign -G -W -p "$work/minisign.pub" -s "$work/minisign.key" >/dev/null
openssl ecparam -genkey -name prime256v1 -noout -out "$work/mender.key" 2>/dev/null
openssl ec -in "$work/mender.key" -pubout -out "$work/mender.pub" 2>/dev/null
payload_files=()
while IFS= read -r -d '' f; do payload_files+=(-f "$f"); done < <(cd "$spec" && find . -type f ! -name bundle.toml -print0 | sort -z)

# The node: the demo service, with a writer that changes the Raft folder and
# the database while it runs (bench/writer.py).
node="$site/node"
mkdir -p "$node/bin" "$site/keys" "$work/out"
python3 bench/make_node.py data "$node" "$RAFT_MIB" "$DB_MIB"
cp bench/writer.py "$node/"
cp "$bin/airlock-demo-service" "$node/bin/demo-service"
cp -r "$spec/lib" "$node/lib"
cp "$spec/data/big.bin" "$node/big.bin"
echo "1.0.0" > "$node/RELEASE"
echo "healthy = true" > "$node/service.conf"
cp "$work/release.pub" "$site/keys/"
cat > "$site/start.sh" <<SH
#!/bin/sh
nohup node/bin/demo-service --listen 127.0.0.1:$port --release-file node/RELEASE --config node/service.conf > node/service.log 2>&1 &
echo \$! > node/pid
nohup python3 node/writer.py node > node/writer.log 2>&1 &
echo \$! > node/writer.pid
SH
# Stops the service and the writer and waits until both are gone. A zombie
# counts as gone (its parent may reap it late), but only once its last
# thread has exited: etcd's main thread can be a zombie while its other
# threads still run the binary, and a copy over it fails with "Text file
# busy".
cat > "$site/stop.sh" <<'SH'
#!/bin/sh
for f in node/pid node/writer.pid; do [ -f $f ] && kill "$(cat $f)" 2>/dev/null; done
for f in node/pid node/writer.pid; do
    [ -f $f ] || continue
    pid=$(cat $f)
    while [ -d /proc/$pid ]; do
        if grep -q '^State:[[:space:]]*Z' /proc/$pid/status 2>/dev/null &&
            [ "$(ls /proc/$pid/task 2>/dev/null | wc -l)" -le 1 ]; then
            break
        fi
        sleep 0.01
    done
    rm -f $f
done
SH
chmod +x "$site/start.sh" "$site/stop.sh"
start_cmd=./start.sh
stop_cmd=./stop.sh
cat > "$site/site.toml" <<TOML
product = "bench"

[service]
name = "bench-service"
start = "$start_cmd"
stop = "$stop_cmd"
health = { url = "http://127.0.0.1:$port/health", timeout_secs = 2 }
version = { url = "http://127.0.0.1:$port/version", timeout_secs = 2 }
health_wait_secs = 30
stop_wait_secs = 30

[binaries]
demo-service = "node/bin/demo-service"

[files]
"files/RELEASE" = "node/RELEASE"
"files/big.bin" = "node/big.bin"

[trees]
lib = "node/lib"

[data]
databases = { main = "node/app.db" }
raft_dir = "node/raft"
config_files = ["node/service.conf"]

[trust]
keys = ["keys/release.pub"]
threshold = 1

[paths]
state_dir = "state"
backup_dir = "backups"
keep_backups = 1
TOML
health() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/health"; }
(cd "$site" && sh -c "$start_cmd")
until health; do sleep 0.01; done

# The cluster: three real etcd members on 127.0.0.1, each a node folder with
# its own site profile (an installed copy of etcd, its RELEASE file, a
# config file and a SQLite database), and the coordinator's cluster profile
# with the probes of the shipped example, examples/etcd-cluster/site.toml.
cluster="$work/cluster"
url() { echo "http://127.0.0.1:$((client_base + $1))"; }
initial=""
for m in 1 2 3; do initial="${initial:+$initial,}n$m=http://127.0.0.1:$((peer_base + m))"; done
for m in 1 2 3; do
    d="$cluster/n$m"
    mkdir -p "$d/node/bin" "$d/keys"
    cp "$(command -v etcd)" "$d/node/bin/etcd"
    echo "1.0.0" > "$d/node/RELEASE"
    echo "quota=2GiB" > "$d/node/etcd.conf"
    sqlite3 "$d/node/app.db" "PRAGMA journal_mode = WAL; CREATE TABLE t (x);" >/dev/null
    cp "$work/release.pub" "$d/keys/"
    cat > "$d/start.sh" <<SH
#!/bin/sh
for v in \$(env | grep -o '^ETCD_[A-Z_]*'); do unset \$v; done
nohup node/bin/etcd --name n$m --data-dir node/data \\
    --listen-client-urls $(url $m) --advertise-client-urls $(url $m) \\
    --listen-peer-urls http://127.0.0.1:$((peer_base + m)) \\
    --initial-advertise-peer-urls http://127.0.0.1:$((peer_base + m)) \\
    --initial-cluster $initial --initial-cluster-state new \\
    --initial-cluster-token airlock-bench > node/etcd.log 2>&1 &
echo \$! > node/pid
SH
    sed -e 's#node/pid node/writer.pid#node/pid#g' "$site/stop.sh" > "$d/stop.sh"
    chmod +x "$d/start.sh" "$d/stop.sh"
    cat > "$d/site.toml" <<TOML
product = "etcd-node"

[service]
name = "etcd member n$m"
start = "./start.sh"
stop = "./stop.sh"
health = { url = "$(url $m)/health", timeout_secs = 3 }
version = { command = "cat node/RELEASE" }
health_wait_secs = 30
stop_wait_secs = 30

[binaries]
etcd = "node/bin/etcd"

[files]
"files/RELEASE" = "node/RELEASE"

[data]
databases = { main = "node/app.db" }
raft_dir = "node/data"
config_files = ["node/etcd.conf"]

[trust]
keys = ["keys/release.pub"]
threshold = 1

[paths]
state_dir = "state"
backup_dir = "backups"
keep_backups = 1
TOML
done
for m in 1 2 3; do (cd "$cluster/n$m" && ./start.sh); done
for m in 1 2 3; do until curl -fs -o /dev/null --max-time 1 "$(url $m)/health"; do sleep 0.05; done; done
mkdir -p "$cluster/coordinator"
{
    printf '[trust]\nkeys = ["%s"]\nthreshold = 1\n\n[paths]\nstate_dir = "state"\n\n[cluster]\nwait_secs = 30\n' \
        "$work/release.pub"
    grep -E '^(leader|healthy|caught_up|move_leader) = ' examples/etcd-cluster/site.toml
    for m in 1 2 3; do
        printf '\n[[cluster.node]]\nname = "n%s"\ntransport = "local"\nsite = "%s"\nvars = { client_url = "%s" }\n' \
            "$m" "$cluster/n$m/site.toml" "$(url $m)"
    done
} > "$cluster/coordinator/cluster.toml"
[ "$(grep -cE '^(leader|healthy|caught_up|move_leader) = ' "$cluster/coordinator/cluster.toml")" = 4 ] || {
    echo "bench: examples/etcd-cluster/site.toml lost a probe" >&2
    exit 1
}
# The release of etcd-node the rounds roll out: etcd with bytes after its
# ELF sections (a new hash, the same program) and its RELEASE file.
etcd_spec="$work/etcd-release"
mkdir -p "$etcd_spec"
cat > "$etcd_spec/bundle.toml" <<'TOML'
name = "etcd-node"
version = "1.0.0"
upgrades_from = "*"
rolling_allowed = true

[[binary]]
name = "etcd"
source = "etcd"
install_path = "/opt/etcd/bin/etcd"

[[file]]
source = "RELEASE"
install_path = "/opt/etcd/RELEASE"
TOML
# The example's own probe commands, for the upgrade by hand.
is_leader() {
    etcdctl --endpoints "$(url "$1")" --dial-timeout 2s --command-timeout 3s endpoint status -w fields 2>/dev/null |
        awk -F' : ' '/"MemberID"/{m=$2} /"Leader"/{l=$2} END{exit !(m != "" && (m "") == (l ""))}'
}
index_of() {
    etcdctl --endpoints "$(url "$1")" --dial-timeout 2s endpoint status -w fields 2>/dev/null |
        awk -F' : ' -v f="\"$2\"" '$1 == f {print $2}'
}
caught_up() {
    local n l
    n=$(index_of "$1" RaftAppliedIndex) l=$(index_of "$2" RaftIndex)
    [ -n "$n" ] && [ -n "$l" ] && [ $((l - n)) -le 100 ]
}
# Upgrades member $1 by hand while member $2 leads: stop, copy the new
# binary and RELEASE file, start, wait for /health and for it to catch up.
by_hand() {
    local t0 t1
    t0=$(now_ms)
    (cd "$cluster/n$1" && ./stop.sh)
    cp "$etcd_spec/etcd" "$cluster/n$1/node/bin/etcd"
    cp "$etcd_spec/RELEASE" "$cluster/n$1/node/RELEASE"
    (cd "$cluster/n$1" && ./start.sh)
    until curl -fs -o /dev/null --max-time 1 "$(url "$1")/health"; do sleep 0.01; done
    t1=$(now_ms)
    echo "rolling member down/by hand $(awk -v ms=$((t1 - t0)) 'BEGIN{printf "%.3f", ms / 1000}') 0" >> "$results"
    until caught_up "$1" "$2"; do sleep 0.05; done
}
writer_start() {
    python3 bench/etcd_writer.py "$1" "$(url 1)" "$(url 2)" "$(url 3)" > "$work/writer.out" &
    writer_pid=$!
    sleep 1
}
# Stops the writer; appends "NAME-failed writes FAILED 0".
writer_stop() {
    kill "$writer_pid"
    wait "$writer_pid" || true
    writer_pid=""
    read -r ok failed retried < "$work/writer.out"
    echo "rolling writes failed/$1 $failed 0" >> "$results"
    echo "bench:   $1: writer $ok ok, $failed failed, $retried retried on another member"
}

for round in $(seq 1 "$rounds"); do
    version="1.$round.0"
    echo "bench: round $round of $rounds ($version)"
    sed -i "s/^version = .*/version = \"$version\"/" "$spec/bundle.toml"
    echo "$version" > "$spec/RELEASE"
    bundle="$work/out/bench-$version.airlock"
    rm -f "$work"/out/* "$work"/peer* "$work"/SHA256SUMS*

    # Build: airlock, then the peers.
    measure "build/airlock" "$bin/airlock-build" --no-progress build --spec "$spec/bundle.toml" \
        --key "$work/release.key" --out "$work/out"
    measure "build/tar|zstd" sh -c "tar -C '$spec' -cf - . | zstd -3 -T0 -q -o '$work/peer.tar.zst'"
    rm -f "$work/peer.tar.zst"
    # The same, made durable as airlock's bundle is (fsync of the file).
    measure "build/tar|zstd+fsync" sh -c "tar -C '$spec' -cf - . | zstd -3 -T0 -q -o '$work/peer.tar.zst' &&
        python3 -c 'import os, sys; os.fsync(os.open(sys.argv[1], os.O_RDONLY))' '$work/peer.tar.zst'"
    rm -f "$work/peer.tar.zst"
    measure "build/shell" sh -c "cd '$spec' && find . -type f -print0 | xargs -0 sha256sum > '$work/SHA256SUMS' &&
        minisign -S -s '$work/minisign.key' -m '$work/SHA256SUMS' >/dev/null &&
        tar -cf - . -C '$work' SHA256SUMS SHA256SUMS.minisig | zstd -3 -T0 -q -o '$work/peer.tar.zst'"
    measure "build/mender-artifact" sh -c "cd '$spec' && mender-artifact write module-image -T bench -n bench-$version \
        -t bench -k '$work/mender.key' -o '$work/peer.mender' $(printf "'%s' " "${payload_files[@]}")"

    # Verify: airlock reads and checks every byte; the peers decompress.
    measure "verify/airlock" "$bin/airlock-apply" verify "$bundle" --site "$site/site.toml"
    measure "verify/zstd -dc" sh -c "zstd -dc '$work/peer.tar.zst' > /dev/null"
    measure "verify/mender-artifact" mender-artifact validate -k "$work/mender.pub" "$work/peer.mender"

    # Stage: what airlock's stage step does (verify and extract), by hand.
    rm -rf "$work/x"; mkdir "$work/x"
    measure "stage/zstd -dc|tar -x" sh -c "zstd -dc '$work/peer.tar.zst' | tar -x -C '$work/x' && sync -f '$work/x'"
    rm -rf "$work/x"; mkdir "$work/x"
    measure "stage/shell" sh -c "minisign -Vq -p '$work/minisign.pub' -m '$work/SHA256SUMS' &&
        zstd -dc '$work/peer.tar.zst' | tar -x -C '$work/x' && cd '$work/x' && sha256sum -c --quiet SHA256SUMS && sync -f ."
    rm -rf "$work/x" "$work/peer.mender"

    # Backups by hand. `cp` copies the live data (the writer runs), as
    # airlock's pre-copy does. `sqlite3 .backup` gets a quiet copy of the
    # database: its online backup starts over whenever a writer changes the
    # source, and with this node's writer it never finishes.
    rm -rf "$work/copy"; mkdir "$work/copy"
    measure "raft backup/cp -a" sh -c "cp -a '$node/raft' '$work/copy/' && sync -f '$work/copy'"
    measure "sqlite backup/cp" sh -c "cp '$node/app.db' '$work/copy/' && sync -f '$work/copy'"
    measure "sqlite backup/sqlite3 .backup" sqlite3 "$work/copy/app.db" ".backup '$work/copy/backup.db'"
    rm -rf "$work/copy"

    # The apply, with its events; then the same node's service stopped and
    # started by hand around a copy of what changed since a copy taken while
    # it ran.
    measure "apply/airlock" sh -c "'$bin/airlock-apply' --json apply '$bundle' --site '$site/site.toml' > '$work/events-$round.jsonl'"
    python3 bench/report.py events "$work/events-$round.jsonl" >> "$results"
    rm -f "$bundle"
    rm -rf "$work/hand"; mkdir "$work/hand"
    rsync -a "$node/raft" "$node/app.db" "$node/app.db-wal" "$work/hand/" 2>/dev/null || true
    t0=$(now_ms)
    (cd "$site" && sh -c "$stop_cmd")
    rsync -a "$node/raft" "$node/app.db" "$work/hand/"
    [ ! -f "$node/app.db-wal" ] || rsync -a "$node/app.db-wal" "$work/hand/"
    sync -f "$work/hand"
    (cd "$site" && sh -c "$start_cmd")
    until health; do sleep 0.01; done
    t1=$(now_ms)
    echo "down/by hand $(awk -v ms=$((t1 - t0)) 'BEGIN{printf "%.3f", ms / 1000}') 0" >> "$results"
    rm -rf "$work/hand"

    # Rolling upgrade of the 3-member etcd cluster under a writer: airlock
    # (followers first, leader last, the example's probes), then the same
    # release by hand with the same probes' commands.
    cp "$(command -v etcd)" "$etcd_spec/etcd"
    echo "airlock-bench-release-$version" >> "$etcd_spec/etcd"
    echo "$version" > "$etcd_spec/RELEASE"
    sed -i "s/^version = .*/version = \"$version\"/" "$etcd_spec/bundle.toml"
    "$bin/airlock-build" --no-progress build --spec "$etcd_spec/bundle.toml" \
        --key "$work/release.key" --out "$work/out" >/dev/null 2>&1
    writer_start "airlock-$round"
    measure "rolling/airlock" sh -c "'$bin/airlock-apply' --json apply '$work/out/etcd-node-$version.airlock' \
        --site '$cluster/coordinator/cluster.toml' --mode rolling > '$work/rolling-$round.jsonl'"
    writer_stop airlock
    python3 bench/report.py rolling "$work/rolling-$round.jsonl" >> "$results"
    rm -f "$work/out/etcd-node-$version.airlock"
    for m in 1 2 3; do [ "$(cat "$cluster/n$m/node/RELEASE")" = "$version" ] || {
        echo "bench: the rollout left n$m at $(cat "$cluster/n$m/node/RELEASE")" >&2
        exit 1
    }; done
    writer_start "hand-$round"
    t0=$(now_ms)
    leader=""
    for m in 1 2 3; do if is_leader $m; then leader=$m; fi; done
    [ -n "$leader" ] || { echo "bench: the cluster has no leader" >&2; exit 1; }
    for m in 1 2 3; do [ $m = "$leader" ] || by_hand $m "$leader"; done
    next=$((leader % 3 + 1))
    id=$(etcdctl --endpoints "$(url "$leader")" member list | awk -F', ' -v n="n$next" '$3 == n {print $1}')
    etcdctl --endpoints "$(url "$leader")" --command-timeout 10s move-leader "$id" >/dev/null
    by_hand "$leader" "$next"
    t1=$(now_ms)
    echo "rolling/by hand $(awk -v ms=$((t1 - t0)) 'BEGIN{printf "%.3f", ms / 1000}') 0" >> "$results"
    writer_stop "by hand"
done

python3 bench/report.py table "$results" "$BIN_MIB" "$BIG_MIB" "$RAFT_MIB" "$DB_MIB" "$rounds"
