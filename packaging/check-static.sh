#!/bin/sh
# Checks the static release binary (default: the one packaging/build-static.sh
# built, which is also the one in the .deb):
#   - no dynamic loader, no NEEDED shared library (`file`, `ldd`, `readelf`);
#   - no OpenSSL in the dependency graph (TLS is rustls);
#   - stripped, and at most 14 MB (Debian's prometheus-node-exporter is 13.7 MB);
#   - `--version` and a `mode cluster --dry-run` complete inside an empty
#     chroot that holds only the binary and the example AMS host tree
#     (examples/host), and the dry run changes nothing there.
# Needs root for chroot(2), or unprivileged user namespaces (unshare -r).
set -eu
cd "$(dirname "$0")/.."
PATH="$PATH:${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"

bin=${1:-target/static/x86_64-unknown-linux-gnu/release/ams-agent}
max_bytes=${AMS_AGENT_MAX_BYTES:-14000000}

fail() { echo "check-static: FAIL: $*" >&2; exit 1; }
ok() { echo "check-static: ok: $*"; }

[ -x "$bin" ] || fail "$bin not found (run packaging/build-static.sh)"

info=$(file -b "$bin")
echo "file: $info"
case $info in
*"static-pie linked"* | *"statically linked"*) ok "file: static" ;;
*) fail "file does not say statically linked" ;;
esac
case $info in
*", stripped"*) ok "file: stripped" ;;
*) fail "not stripped" ;;
esac

# ldd exits 1 for "not a dynamic executable"; both answers mean static.
lddout=$(ldd "$bin" 2>&1 || true)
echo "ldd: $lddout"
case $lddout in
*"statically linked"* | *"not a dynamic executable"*) ok "ldd: not dynamic" ;;
*) fail "ldd lists shared libraries" ;;
esac
if readelf -d "$bin" | grep -q '(NEEDED)'; then
	readelf -d "$bin" | grep '(NEEDED)' >&2
	fail "NEEDED entries in the dynamic section"
fi
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
	fail "the binary asks for a program interpreter"
fi
ok "readelf: no NEEDED library, no interpreter"

# TLS: rustls only. Nothing may pull openssl/openssl-sys/native-tls into
# the build for this target.
if cargo tree --locked --offline -e normal,build --target x86_64-unknown-linux-gnu \
	--prefix none --format '{p}' | grep -E '^(openssl|openssl-sys|native-tls|openssl-probe) ' >&2; then
	fail "OpenSSL crates in the dependency graph"
fi
ok "cargo tree: no openssl, openssl-sys or native-tls"

size=$(stat -c %s "$bin")
echo "size: $size bytes ($(awk "BEGIN { printf \"%.2f\", $size / 1000000 }") MB; budget $max_bytes bytes; prometheus-node-exporter: 13.7 MB)"
[ "$size" -le "$max_bytes" ] || fail "binary is $size bytes, over the budget of $max_bytes"
ok "size within budget"

# The empty chroot: only the example host tree and the binary.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cp -a examples/host/. "$root/"
cp "$bin" "$root/ams-agent"
before=$(cd "$root" && find . -type f ! -name ams-agent -exec sha256sum {} + | sort)
echo "chroot contents: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"

if [ "$(id -u)" = 0 ]; then
	in_chroot() { chroot "$root" "$@"; }
else
	in_chroot() { unshare -r chroot "$root" "$@"; }
fi

version=$(in_chroot /ams-agent --version) || fail "--version in the empty chroot"
echo "chroot: /ams-agent --version: $version"
out=$(in_chroot /ams-agent mode cluster 10.0.1.5 --ip 10.0.1.20 --no-restart --dry-run 2>&1) ||
	{ echo "$out" >&2; fail "mode --dry-run in the empty chroot"; }
echo "$out" | sed -n '1,3p' | sed 's/^/chroot: /'
echo "$out" | grep -q '^Plan: switch Ant Media Server' || fail "the dry run printed no plan"
echo "$out" | grep -q '+clusterdb.host=mongodb://10.0.1.5:27017' || fail "the plan lacks the clusterdb.host change"
after=$(cd "$root" && find . -type f ! -name ams-agent -exec sha256sum {} + | sort)
[ "$before" = "$after" ] || fail "the dry run changed files in the chroot"
ok "empty chroot: --version and mode cluster --dry-run completed, nothing changed"
