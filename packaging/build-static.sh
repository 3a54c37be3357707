#!/bin/sh
# Builds the release binary for x86_64 Linux with glibc linked statically
# (no shared library at run time; TLS is rustls, never OpenSSL):
#
#   target/static/x86_64-unknown-linux-gnu/release/ams-agent
#
# Why glibc and not musl: the musl target is not installable on the build
# machines. `+crt-static` needs an explicit --target, or it would also apply
# to proc-macro crates (which must be dynamic libraries) and break the build;
# that is also why this flag is here and not in a global .cargo/config.toml,
# which would change `cargo test` as well.
#
# Its own --target-dir keeps this build from fighting `cargo test` over the
# lock of target/, and keeps it cached between runs. debian/rules calls this
# script; packaging/ci-deb.sh then checks the very same binary.
#
# Environment: CARGO_NET_OFFLINE=true to forbid network access (debian/rules
# sets it), AMS_AGENT_STATIC_TARGET_DIR to move the target folder.
set -eu
cd "$(dirname "$0")/.."

# rustup's cargo, wherever it is: PATH first, then $CARGO_HOME or ~/.cargo.
PATH="$PATH:${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
export PATH
if ! command -v cargo >/dev/null 2>&1; then
	echo "build-static.sh: cargo not found in PATH or ${CARGO_HOME:-$HOME/.cargo}/bin (install Rust with rustup)" >&2
	exit 1
fi

target=x86_64-unknown-linux-gnu
target_dir=${AMS_AGENT_STATIC_TARGET_DIR:-target/static}

# dpkg-buildpackage exports Debian's C build flags; cc-based build scripts
# (ring) would see them and rebuild, and the build outside dpkg would no
# longer be the cached one. Same flags whichever way the script is called.
unset CFLAGS CXXFLAGS CPPFLAGS LDFLAGS

# dpkg-buildpackage exports SOURCE_DATE_EPOCH (the changelog's date), and
# some build scripts (ring) rebuild when it changes: set the same value here.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -STimestamp 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
export RUSTFLAGS

cargo build --release --locked --target "$target" --target-dir "$target_dir" --bin ams-agent

bin="$target_dir/$target/release/ams-agent"
echo "build-static.sh: built $bin ($(stat -c %s "$bin") bytes)" >&2
