#!/usr/bin/env bash
# The README's demo: build a signed bundle from examples/demo, apply it to a
# throwaway site running airlock-demo-service 1.0.0, then apply a broken 1.2.0
# and watch it roll back by itself. Needs only this repository and cargo.
#
# AIRLOCK_BIN_DIR=/usr/bin bash examples/demo.sh runs the airlock-build and
# airlock-apply found there (the Debian packages' binaries) instead of
# building them; the demo service is built with cargo either way.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
bin="$target/debug"
if [ -n "${AIRLOCK_BIN_DIR:-}" ]; then
    build="$AIRLOCK_BIN_DIR/airlock-build"
    apply="$AIRLOCK_BIN_DIR/airlock-apply"
    for tool in "$build" "$apply"; do
        [ -x "$tool" ] || { echo "demo: $tool is not an executable (AIRLOCK_BIN_DIR=$AIRLOCK_BIN_DIR)" >&2; exit 1; }
    done
    echo "==> using $build and $apply; building the demo service (cargo build)"
    cargo build --quiet -p airlock-tests --bin airlock-demo-service
else
    echo "==> building airlock (cargo build)"
    cargo build --quiet -p airlock-builder -p airlock-applier -p airlock-tests --bin airlock-build --bin airlock-apply --bin airlock-demo-service
    build="$bin/airlock-build"
    apply="$bin/airlock-apply"
fi

if (exec 3<>/dev/tcp/127.0.0.1/18431) 2>/dev/null; then
    echo "demo: something already listens on 127.0.0.1:18431 (an earlier demo's service?); stop it first" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-demo.XXXXXX")
cleanup() {
    if [ -f "$work/site/node/pid" ]; then kill "$(cat "$work/site/node/pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
echo "==> throwaway folder: $work (removed at the end)"

echo "==> release engineer: make a release key"
mkdir -p "$work/keys"
"$build" keygen --out "$work/keys/release" --unencrypted

echo "==> release engineer: build demo 1.1.0"
cp -r examples/demo "$work/release"
mkdir -p "$work/release/bin"
cp "$bin/airlock-demo-service" "$work/release/bin/"
export SOURCE_DATE_EPOCH=1767225600
"$build" --no-progress build --spec "$work/release/bundle.toml" --key "$work/keys/release.key" --out "$work/out"
"$build" inspect "$work/out/demo-1.1.0.airlock"

echo "==> site operator: a node running demo 1.0.0"
site="$work/site"
mkdir -p "$site/node/bin" "$site/keys"
cp "$work/release/site/site.toml" "$site/site.toml"
cp "$work/keys/release.pub" "$site/keys/"
cp "$bin/airlock-demo-service" "$site/node/bin/demo-service"
echo "1.0.0" > "$site/node/RELEASE"
echo "healthy = true" > "$site/node/service.conf"
cd "$site"
nohup node/bin/demo-service --listen 127.0.0.1:18431 --release-file node/RELEASE --config node/service.conf --static node/static > node/service.log 2>&1 &
echo $! > node/pid
cd "$repo"
sleep 0.5

echo "==> site operator: verify, then apply 1.1.0"
# Without --site, airlock-apply reads AIRLOCK_SITE (else /etc/airlock/site.toml).
echo "==> site operator: look inside the bundle and read its RELEASE file (AIRLOCK_SITE names the profile)"
AIRLOCK_SITE="$site/site.toml" "$apply" inspect "$work/out/demo-1.1.0.airlock" --files
AIRLOCK_SITE="$site/site.toml" "$apply" extract "$work/out/demo-1.1.0.airlock" files/RELEASE --out "$work/RELEASE-1.1.0"
sed 's/^/    RELEASE: /' "$work/RELEASE-1.1.0"
"$apply" verify "$work/out/demo-1.1.0.airlock" --site "$site/site.toml"
"$apply" apply "$work/out/demo-1.1.0.airlock" --site "$site/site.toml"
"$apply" status --site "$site/site.toml"
echo "==> the static tree is in place, served by the demo service:"
(cd "$site/node/static" && find . -mindepth 1 | sort | sed 's/^/    /')
exec 3<>/dev/tcp/127.0.0.1/18431
printf 'GET /static/css/latest.css HTTP/1.0\r\n\r\n' >&3
sed 's/^/    /' <&3
exec 3<&-

echo "==> release engineer: build demo 1.2.0, whose config makes the health check fail"
cd "$work/release"
printf 'ALTER TABLE orders ADD COLUMN note TEXT;\n' > migrations/0003_add_note.sql
printf 'healthy = false\n' > service.conf
echo "1.2.0" > RELEASE
# Its static tree has a new stylesheet and drops the old one.
rm static/css/site-1.1.css static/css/latest.css
printf 'body { font-family: serif; }\n' > static/css/site-1.2.css
ln -s site-1.2.css static/css/latest.css
sed -e 's/^version = .*/version = "1.2.0"/' -e 's/^upgrades_from = .*/upgrades_from = ">=1.1.0, <1.2.0"/' bundle.toml > bundle-1.2.0.toml
printf '\n[[file]]\nsource = "service.conf"\ninstall_path = "/opt/demo/service.conf"\n' >> bundle-1.2.0.toml
"$build" --no-progress build --spec bundle-1.2.0.toml --key "$work/keys/release.key" --out "$work/out"
cd "$repo"

echo "==> site operator: apply 1.2.0 (expected to fail and roll back, exit code 4)"
set +e
"$apply" apply "$work/out/demo-1.2.0.airlock" --site "$site/site.toml"
code=$?
set -e
echo "airlock-apply exited with $code"
[ "$code" -eq 4 ] || { echo "demo: expected exit code 4 (rolled back)"; exit 1; }
echo "==> the node runs 1.1.0 again:"
"$apply" status --site "$site/site.toml"
version=$(cat "$site/node/RELEASE")
[ "$version" = "1.1.0" ] || { echo "demo: RELEASE is $version, expected 1.1.0"; exit 1; }
css=$(readlink "$site/node/static/css/latest.css")
[ "$css" = "site-1.1.css" ] || { echo "demo: the static tree was not swapped back (latest.css -> $css)"; exit 1; }
echo "==> and its static tree is 1.1.0's again (css/latest.css -> $css)"
echo "demo finished: 1.0.0 -> 1.1.0 applied, broken 1.2.0 rolled back to 1.1.0"
