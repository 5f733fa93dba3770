#!/usr/bin/env bash
# CI's check of the Debian packages (packaging/README.md): build them, install
# them as a site would, check the man pages, completions and /etc/airlock,
# run the demo with the installed binaries, then remove the packages again.
# Needs root or sudo, on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
fail() { echo "install-check: $*" >&2; exit 1; }

# cargo-deb reads the shared libraries the binaries need with
# dpkg-shlibdeps (dpkg-dev) and splits debug symbols with objcopy
# (binutils); the checks below read the man pages with man (man-db).
need=()
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]}"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
# A slim image's dpkg drops man pages and docs at install time.
if grep -qs 'path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
    fail "this machine's dpkg excludes /usr/share/man (/etc/dpkg/dpkg.cfg.d): the man pages cannot be checked here"
fi

start=$SECONDS
debs=$(bash packaging/build-debs.sh)
echo "==> built in $((SECONDS - start)) s:"
echo "$debs"
apply_deb=$(grep '/airlock-apply_[^/]*\.deb$' <<<"$debs") || fail "no airlock-apply .deb"
build_deb=$(grep '/airlock-build_[^/]*\.deb$' <<<"$debs") || fail "no airlock-build .deb"

for deb in "$apply_deb" "$build_deb"; do
    echo "==> $deb"
    dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Suggests\|Section\):/    \1:/p'
    dpkg-deb -c "$deb" | awk '{print "    " $6}'
done
# The site profile is the operator's: nothing in /etc, so no conffiles.
listing=$(dpkg-deb -c "$apply_deb")
if grep -q ' \./etc/' <<<"$listing"; then
    fail "airlock-apply ships files in /etc"
fi

echo "==> apt-get install"
# The packages depend on libc only, which is always there:
# the package lists are fetched only when apt cannot do without them.
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y "$apply_deb" "$build_deb"; then
    $sudo apt-get update
    $sudo apt-get install -y "$apply_deb" "$build_deb"
fi
removed=""
remove() {
    [ -z "$removed" ] || return 0
    removed=1
    echo "==> apt-get remove"
    $sudo apt-get remove -y airlock-apply airlock-build
}
trap remove EXIT

echo "==> what the packages installed"
for bin in airlock-apply airlock-build; do
    [ "$(command -v "$bin")" = "/usr/bin/$bin" ] || fail "$bin is not /usr/bin/$bin"
    "$bin" --version
    page=$(man -w "$bin") || fail "man -w $bin finds no page"
    [ "$page" = "/usr/share/man/man1/$bin.1.gz" ] || fail "man -w $bin gives $page"
    man -P cat "$bin" 2>/dev/null | grep -c "^NAME" >/dev/null || fail "man $bin renders no NAME section"
    bash -c "source /usr/share/bash-completion/completions/$bin && complete -p $bin" ||
        fail "the bash completion of $bin does not load"
    [ -f "/usr/share/zsh/vendor-completions/_$bin" ] || fail "no zsh completion of $bin"
    [ -f "/usr/share/fish/vendor_completions.d/$bin.fish" ] || fail "no fish completion of $bin"
    echo "    $bin: /usr/bin/$bin, $page, bash, zsh and fish completions"
done
[ -d /etc/airlock ] || fail "/etc/airlock is missing"
[ "$(stat -c %a /etc/airlock)" = 755 ] || fail "/etc/airlock has mode $(stat -c %a /etc/airlock), not 755"
echo "    /etc/airlock (755), examples in /usr/share/doc/airlock-apply/examples/"
[ -f /usr/share/doc/airlock-apply/examples/site.toml ] || fail "no example site profile"

echo "==> the demo with the installed binaries"
start=$SECONDS
AIRLOCK_BIN_DIR=/usr/bin bash examples/demo.sh
echo "==> demo passed in $((SECONDS - start)) s"

remove
trap - EXIT
for path in /usr/bin/airlock-apply /usr/bin/airlock-build /usr/share/man/man1/airlock-apply.1.gz; do
    [ ! -e "$path" ] || fail "$path is still there after apt-get remove"
done
# A removed package keeps /etc/airlock; purging it removes the folder when empty.
[ -d /etc/airlock ] || fail "apt-get remove deleted /etc/airlock"
echo "==> dpkg --purge"
$sudo dpkg --purge airlock-apply
if [ -z "$(ls -A /etc/airlock 2>/dev/null)" ] && [ -d /etc/airlock ]; then
    fail "/etc/airlock is still there, empty, after dpkg --purge"
fi
echo "install-check: passed"
