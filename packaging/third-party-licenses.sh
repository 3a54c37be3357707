#!/bin/sh
# Prints the Rust crates linked into the release binary (normal dependencies
# for x86_64 Linux, no build or dev dependencies) with their licenses.
# Used by debian/rules for /usr/share/doc/ams-agent/third-party-licenses.txt.
set -eu
cd "$(dirname "$0")/.."
PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

echo "Rust crates built into /usr/bin/ams-agent (and the proc-macro crates used to build it), with their licenses."
echo "Generated from Cargo.lock with: cargo tree -e normal --target x86_64-unknown-linux-gnu"
echo
cargo tree --locked --offline -e normal --target x86_64-unknown-linux-gnu \
	--prefix none --format '{p}: {l}' \
	| sed -e 's/ (proc-macro)//' -e 's# (/[^)]*)##' -e 's/ (\*)$//' \
	| grep -v '^ams-agent v' | sort -u
