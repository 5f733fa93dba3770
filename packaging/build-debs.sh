#!/usr/bin/env bash
# Builds the Debian packages airlock-apply and airlock-build with cargo-deb
# (packaging/README.md): the release binaries, then their man pages and shell
# completions, made by running those binaries, then one .deb each from
# `[package.metadata.deb]` in applier/Cargo.toml and builder/Cargo.toml.
# Prints the path of each .deb on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: a new cargo-deb may change what goes into the packages.
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "==> installing cargo-deb $cargo_deb_version (cargo install)" >&2
    cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

# Where cargo builds (CARGO_TARGET_DIR, a config, or ./target): cargo-deb
# reads `target/release/` in the assets as this folder's release/.
target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || { echo "build-debs: cargo metadata gave no target_directory" >&2; exit 1; }

echo "==> building the release binaries" >&2
cargo build --release --locked -p airlock-applier -p airlock-builder \
    --bin airlock-apply --bin airlock-build

# Man pages and completions come from the binaries just built, so they
# match their command line exactly. The assets of the packages name these
# paths (`target/release/deb-assets/...`).
for bin in airlock-apply airlock-build; do
    echo "==> man pages and completions of $bin" >&2
    out="$target/release/deb-assets/$bin"
    rm -rf "$out"
    mkdir -p "$out/man" "$out/completions"
    "$target/release/$bin" manpages --out "$out/man"
    # -n: no name or time in the gzip header, the same bytes every build.
    gzip -9n "$out"/man/*.1
    "$target/release/$bin" completions bash > "$out/completions/$bin.bash"
    "$target/release/$bin" completions zsh > "$out/completions/_$bin"
    "$target/release/$bin" completions fish > "$out/completions/$bin.fish"
done

# Packages of an earlier version would be installed with the new ones by a
# `apt-get install ./airlock-apply_*.deb`.
rm -f "$target"/debian/airlock-apply_*.deb "$target"/debian/airlock-build_*.deb \
    "$target"/debian/airlock-apply-dbgsym_*.ddeb "$target"/debian/airlock-build-dbgsym_*.ddeb
# The files in the packages carry the time of the last commit, not of the
# build. Only cargo-deb sees it: the C code of zstd and SQLite is rebuilt
# when SOURCE_DATE_EPOCH changes.
epoch=${SOURCE_DATE_EPOCH:-}
if [ -z "$epoch" ] && git rev-parse --git-dir >/dev/null 2>&1; then
    epoch=$(git log -1 --format=%ct)
fi
for package in airlock-applier airlock-builder; do
    echo "==> cargo deb -p $package" >&2
    if [ -n "$epoch" ]; then
        SOURCE_DATE_EPOCH=$epoch cargo deb -p "$package" --no-build
    else
        cargo deb -p "$package" --no-build
    fi
done
