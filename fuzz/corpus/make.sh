#!/usr/bin/env bash
# Makes the seed corpus of the fuzz targets from real airlock files
# (fuzz/README.md): bundles built by airlock-build from the shipped demo
# spec and signed by corpus/seed.key, their manifests and signatures, the
# seed key pair itself, a key pair written by Debian's `minisign -G -W`,
# and the payload paths of the bundles. Run from the repository root after
# `cargo build --workspace --bins`; the files are committed, so this only
# runs again when the format changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=target/debug/airlock-build
out=fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -f "$out/seed.key" ]; then
    "$build" keygen --unencrypted --out "$out/seed"
fi

# The demo spec with a small stand-in for its binary, so seeds stay small.
cp -r examples/demo "$work/demo"
mkdir -p "$work/demo/bin"
printf '#!/bin/sh\necho "demo-service 1.1.0"\n' >"$work/demo/bin/airlock-demo-service"
chmod +x "$work/demo/bin/airlock-demo-service"
"$build" --no-progress build --spec "$work/demo/bundle.toml" --key "$out/seed.key" \
    --out "$work/one" >/dev/null
"$build" --no-progress build --spec "$work/demo/bundle.toml" --key "$out/seed.key" \
    --out "$work/level19" --level 19 >/dev/null

# A trust update signed by the seed key, and a bundle carrying it.
"$build" trust new --key "$out/seed.pub" --trust-version 2 --expires-after-days 365 \
    --out "$work/trust-2.json" 2>/dev/null
"$build" trust sign "$work/trust-2.json" --key "$out/seed.key" 2>/dev/null
cp "$work/trust-2.json" "$work/demo/trust-2.json"
sed -i '1i trust_update = "trust-2.json"' "$work/demo/bundle.toml"
"$build" --no-progress build --spec "$work/demo/bundle.toml" --key "$out/seed.key" \
    --out "$work/carrying" >/dev/null

mkdir -p "$out"/{bundle_reader,manifest,public_key,secret_key,signature,bundle_path,trust_update}
cp "$work"/one/*.airlock "$out/bundle_reader/demo.airlock"
cp "$work"/level19/*.airlock "$out/bundle_reader/demo-level19.airlock"
cp "$work"/carrying/*.airlock "$out/bundle_reader/demo-carrying-trust.airlock"
cp "$work/trust-2.json" "$out/trust_update/trust-2.json"
# Manifest and signature, as the container holds them.
tar -xf "$out/bundle_reader/demo.airlock" -C "$work" manifest.json
cp "$work/manifest.json" "$out/manifest/demo.json"
tar -tf "$out/bundle_reader/demo.airlock" | grep '^signature-' | while read -r sig; do
    tar -xf "$out/bundle_reader/demo.airlock" -C "$work" "$sig"
    cp "$work/$sig" "$out/signature/demo.minisig"
done
cp "$out/seed.pub" "$out/public_key/seed.pub"
cp "$out/seed.key" "$out/secret_key/seed.key"
if command -v minisign >/dev/null 2>&1; then
    minisign -G -W -p "$work/m.pub" -s "$work/m.key" >/dev/null
    cp "$work/m.pub" "$out/public_key/minisign.pub"
    cp "$work/m.key" "$out/secret_key/minisign-W.key"
    printf 'fuzz\n' >"$work/data"
    minisign -S -s "$work/m.key" -m "$work/data" -t 'a trusted comment' >/dev/null
    cp "$work/data.minisig" "$out/signature/minisign.minisig"
fi
# Payload paths, one per file, as tar names them.
i=0
tar -xOf "$out/bundle_reader/demo.airlock" payload.tar.zst | zstd -dc | tar -t |
    while read -r path; do
        i=$((i + 1))
        printf '%s' "$path" >"$out/bundle_path/path-$i"
    done
ls "$out"/* | head -50
