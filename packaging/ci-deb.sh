#!/bin/bash
# The package checks of CI (.ci/run calls this after `cargo test`), also
# runnable by hand as root on a Debian/Ubuntu machine where ams-agent is not
# installed:
#   1. build the .deb (one static release build, reused below);
#   2. check the static binary (packaging/check-static.sh: ldd, size,
#      no OpenSSL, the empty-chroot run);
#   3. lintian: no error, no warning that debian/ams-agent.lintian-overrides
#      does not justify;
#   4. dpkg -i, then check the installed files, `ams-agent --version`, man
#      pages, completions, that the unit is neither enabled nor started;
#   5. systemd-analyze verify the installed units (no output allowed);
#   6. the examples in packaging/examples: shell syntax, cloud-config, and
#      that every ams-agent flag they use exists;
#   7. dpkg -r keeps what `join` wrote, dpkg --purge removes everything.
# Needs: dpkg-dev debhelper lintian fakeroot systemd (man-db comes with
# lintian); uses shellcheck and cloud-init when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"

step() { printf '\n== ci-deb: %s\n' "$*"; }
fail() { echo "ci-deb: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i, chroot)"
if dpkg-query -W -f '${Status}' ams-agent 2>/dev/null | grep -q 'installed'; then
	fail "ams-agent is already installed here; this script installs and purges it (dpkg --purge ams-agent first)"
fi

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=target/debian/ams-agent_${version}_${arch}.deb
changes=target/debian/ams-agent_${version}_${arch}.changes
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ "${version%%-*}" = "$crate_version" ] ||
	fail "debian/changelog says $version, Cargo.toml says $crate_version: add a changelog entry (dch -v $crate_version)"

step "build the package"
packaging/build-deb.sh

step "check the static binary"
packaging/check-static.sh

step "lintian"
lintian --fail-on error,warning --info "$changes"
echo "lintian: no error, no unjustified warning"

step "install"
installed=0
cleanup() { if [ "$installed" = 1 ]; then dpkg --purge ams-agent >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
dpkg -i "$deb"
installed=1

step "installed files"
files=$(dpkg -L ams-agent)
for f in /usr/bin/ams-agent \
	/lib/systemd/system/ams-agent.service \
	/usr/share/man/man1/ams-agent.1.gz \
	/usr/share/bash-completion/completions/ams-agent \
	/usr/share/zsh/vendor-completions/_ams-agent \
	/usr/share/fish/vendor_completions.d/ams-agent.fish \
	/usr/share/doc/ams-agent/copyright \
	/usr/share/doc/ams-agent/third-party-licenses.txt.gz \
	/usr/share/doc/ams-agent/examples/agent.toml \
	/usr/share/doc/ams-agent/examples/user-data-origin.sh \
	/usr/share/doc/ams-agent/examples/user-data-edge.sh \
	/usr/share/doc/ams-agent/examples/user-data-mongodb.sh \
	/usr/share/doc/ams-agent/examples/cloud-config-edge.yaml; do
	grep -qx "$f" <<<"$files" || fail "$f is not in the package"
	[ -e "$f" ] || fail "$f is not installed"
done
echo "all expected files installed"

got=$(/usr/bin/ams-agent --version)
[ "$got" = "ams-agent $crate_version" ] || fail "ams-agent --version says '$got', expected 'ams-agent $crate_version'"
echo "/usr/bin/ams-agent --version: $got"

# One man page per visible subcommand, each renders without a warning.
# (A description wrapped onto a second line is indented deeper: not a command.)
for sub in $(/usr/bin/ams-agent --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && /^  [a-z]/ && $1 != "help" { print $1 }'); do
	page=/usr/share/man/man1/ams-agent-$sub.1.gz
	[ -e "$page" ] || fail "no man page for ams-agent $sub ($page)"
done
for page in $(grep '^/usr/share/man/man1/' <<<"$files"); do
	warnings=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null || true)
	[ -z "$warnings" ] || fail "man $page: $warnings"
done
echo "man pages: $(grep -c '^/usr/share/man/man1/' <<<"$files") pages, no groff warning"

bash -c 'source /usr/share/bash-completion/completions/ams-agent && complete -p ams-agent' >/dev/null ||
	fail "the bash completion does not register"
if command -v zsh >/dev/null; then zsh -n /usr/share/zsh/vendor-completions/_ams-agent || fail "zsh completion syntax"; fi
if command -v fish >/dev/null; then fish -n /usr/share/fish/vendor_completions.d/ams-agent.fish || fail "fish completion syntax"; fi
echo "completions: bash registers$(command -v zsh >/dev/null && echo ', zsh parses')$(command -v fish >/dev/null && echo ', fish parses')"

[ -z "$(dpkg-query -W -f '${Conffiles}' ams-agent)" ] || fail "unexpected conffiles (join owns /etc/ams-agent)"
[ ! -e /etc/ams-agent/agent.toml ] || fail "the package must not write /etc/ams-agent/agent.toml"
if compgen -G '/etc/systemd/system/*.wants/ams-agent.service' >/dev/null; then
	fail "the package enabled ams-agent.service"
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet ams-agent.service; then
	fail "the package started ams-agent.service"
fi
echo "ams-agent.service: installed, not enabled, not started"

step "systemd-analyze verify (installed units)"
units=$(grep -E '^/lib/systemd/system/[^/]+$|^/usr/lib/systemd/system/[^/]+$' <<<"$files")
report=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify $units 2>&1) || { echo "$report" >&2; fail "systemd-analyze verify"; }
[ -z "$report" ] || { echo "$report" >&2; fail "systemd-analyze verify reported problems"; }
echo "systemd-analyze verify $units: clean"

step "examples"
for f in packaging/examples/*.sh; do
	bash -n "$f" || fail "$f: shell syntax"
	if command -v shellcheck >/dev/null; then shellcheck -s bash "$f" || fail "$f: shellcheck"; fi
done
# The origin and edge user-data differ only in the role.
diff <(grep -v '^#' packaging/examples/user-data-origin.sh | sed 's/^ROLE="origin"$/ROLE="edge"/') \
	<(grep -v '^#' packaging/examples/user-data-edge.sh) ||
	fail "user-data-origin.sh and user-data-edge.sh differ in more than ROLE"
for f in packaging/examples/*.yaml; do
	head -n1 "$f" | grep -qx '#cloud-config' || fail "$f: the first line must be #cloud-config"
	if command -v cloud-init >/dev/null; then
		cloud-init schema --config-file "$f" || fail "$f: cloud-init schema"
	elif /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
		/usr/bin/python3 -c 'import sys, yaml; assert isinstance(yaml.safe_load(open(sys.argv[1])), dict)' "$f" ||
			fail "$f: not a YAML mapping"
	else
		echo "($f: neither cloud-init nor python3-yaml here: YAML not checked)"
	fi
done
# Every ams-agent flag an example uses is one the installed binary has.
for f in packaging/examples/*; do
	while IFS= read -r sub; do
		[ -n "$sub" ] || continue
		# shellcheck disable=SC2086 # "setup mongo" is two words on purpose
		help=$(/usr/bin/ams-agent $sub --help) || fail "$f: ams-agent $sub does not exist"
		for flag in $(grep -E "ams-agent $sub|--mongo-" "$f" | grep -v '^[[:space:]]*#' | grep -oE -- '--[a-z][a-z-]*' | sort -u); do
			grep -qE -- "(^|[ ,])$flag([ =,]|$)" <<<"$help" || fail "$f: ams-agent $sub has no flag $flag"
		done
	done < <(grep -ohE 'ams-agent (join|mode cluster|mode standalone|setup mongo|run|status|leave)' "$f" | sort -u | cut -d' ' -f2-)
done
echo "examples: syntax ok, origin/edge consistent, every ams-agent flag exists"

step "remove keeps join's files, purge removes everything"
mkdir -p /etc/ams-agent /var/lib/ams-agent/backup
printf '# written by join (simulated)\n' >/etc/ams-agent/agent.toml
install -m 0600 /dev/null /etc/ams-agent/mongo-password
mkdir -p /etc/systemd/system/ams-agent.service.d
printf '[Service]\nSupplementaryGroups=root\n' >/etc/systemd/system/ams-agent.service.d/10-ams-group.conf
dpkg -r ams-agent
[ ! -e /usr/bin/ams-agent ] || fail "dpkg -r left /usr/bin/ams-agent"
[ ! -e /lib/systemd/system/ams-agent.service ] || fail "dpkg -r left the unit"
[ -e /etc/ams-agent/agent.toml ] && [ -e /etc/ams-agent/mongo-password ] || fail "dpkg -r removed join's configuration"
dpkg --purge ams-agent
installed=0
[ ! -e /etc/ams-agent ] || fail "dpkg --purge left /etc/ams-agent"
[ ! -e /var/lib/ams-agent ] || fail "dpkg --purge left /var/lib/ams-agent"
[ ! -e /etc/systemd/system/ams-agent.service.d ] || fail "dpkg --purge left the reporter's drop-in"
if dpkg-query -W -f '${Status}' ams-agent 2>/dev/null | grep -q 'installed'; then fail "still installed"; fi
echo "remove kept /etc/ams-agent; purge removed /etc/ams-agent, /var/lib/ams-agent and the drop-in"

step "all package checks passed ($deb, $(stat -c %s "$deb") bytes)"
