#!/bin/bash
# The real-systemd boot test (issue 12, item 10). `.ci/run` calls it after
# packaging/ci-deb.sh; runnable by hand as root on a Debian machine:
#
#   sudo packaging/ci-boot.sh
#
# What `systemd-analyze verify` cannot see (run-time sandbox denials, the
# credential systemd hands the reporter, what a re-join does to a running
# reporter) is only seen under a real PID 1. So:
#
#   1. a Debian 12 rootfs made by mmdebstrap (systemd, dbus, python3-mockupdb),
#      cached as target/boot/rootfs-<key>.tar, the key a hash of the recipe
#      (suite, variant, package list, mirror): a changed list rebuilds it;
#   2. booted with `systemd-nspawn -b --register=no --keep-unit
#      --private-network` (no systemd as PID 1 and no system bus needed on
#      this side; the container has loopback only); commands run inside
#      through `nsenter -t <its PID 1> -a`, after /run/systemd/private
#      exists and `systemctl is-system-running --wait` says `running`;
#   3. inside: the MongoDB wire peer (tests/peers/mongo_peer.py, MockupDB,
#      SCRAM-SHA-256, authorization enforced) on 127.0.0.1:27017, an AMS
#      install tree (examples/host) owned by `antmedia`, files 0640, and a
#      stand-in `antmedia.service` answering HTTP on 127.0.0.1:5080
#      (packaging/boot/antmedia.service); the built .deb installed with apt;
#   4. the checks (each one line `ok` or `FAIL`, then "N passed, N failed"):
#      - `join` with a password; the reporter active, its password handed
#        over by LoadCredential= ($CREDENTIALS_DIRECTORY), heartbeating for a
#        minute with the same PID, NRestarts=0, no sandbox denial in
#        `journalctl -u ams-agent` (Permission denied, Operation not
#        permitted, EPERM, EACCES, status=2xx/…, …) and no WARN/ERROR line;
#      - AMS stopped then started: the document says degraded then ready;
#      - issue 12 item 3: nodeGroup edited in red5.properties (0640
#        antmedia) after the password join is in the document within the
#        reporter's 60 s refresh (no restart; the wait runs in the same
#        minute as the heartbeat count, so it costs no extra time), not
#        marked as taken from agent.toml (ams.fallback); so is a later
#        `ams-agent mode standalone`;
#      - issue 12 item 1: the password changed in the peer (old connections
#        cut), `join` again with the new one: the reporter is restarted,
#        holds the new credential, and heartbeats again;
#      - `systemctl stop ams-agent` marks the node `left` within
#        TimeoutStopSec; `ams-agent leave` stops, disables, marks `left`;
#      - `apt purge ams-agent` leaves nothing of the package or of what the
#        agent created (a file-system listing before install and after
#        purge; what remains is listed).
#
# Every wait has a deadline and says what it waited for; on a failure the
# unit's journal tail is printed; the container is always powered off and
# its tree removed (trap), also on failure or Ctrl-C. Under CI (CI set) a
# missing tool or privilege fails; elsewhere it is a skip with a note.
#
# Needs: root, systemd-container (systemd-nspawn), mmdebstrap, util-linux
# (nsenter), the Debian mirror (only to build the rootfs), and the .deb:
# target/debian/ams-agent_<version>_<arch>.deb, built here with
# packaging/build-deb.sh when missing or older than the sources
# (AMS_AGENT_BOOT_DEB=FILE uses that one). AMS_AGENT_BOOT_MIRROR=URI passes a
# mirror to mmdebstrap (default: its own, with updates and security).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin:${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"

t0_ms=$(date +%s%3N)
now_ms() { date +%s%3N; }
elapsed() { awk -v a="$t0_ms" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
step() { printf '\n== ci-boot [%6ss]: %s\n' "$(elapsed)" "$*"; }

passed=0
failed=0
failures=()
ok() {
	passed=$((passed + 1))
	echo "ok   - $*"
}
bad() {
	failed=$((failed + 1))
	failures+=("$*")
	echo "FAIL - $*" >&2
	unit_journal_tail ams-agent.service 25
}
# A failure after which nothing else can be checked.
fatal() {
	failed=$((failed + 1))
	failures+=("$*")
	echo "ci-boot: FAIL: $*" >&2
	[ -z "${leader:-}" ] || unit_journal_tail ams-agent.service 40
	summary
	exit 1
}
missing() {
	if [ -n "${CI:-}" ]; then
		fatal "$* (CI must have it: see .ci/run)"
	fi
	echo "SKIPPED: ci-boot: $* (under CI this fails)"
	exit 0
}
summary() {
	echo
	if [ "$failed" -gt 0 ]; then
		echo "ci-boot: failed checks:"
		printf '  - %s\n' "${failures[@]}"
	fi
	echo "ci-boot: total wall time $(elapsed)s (rootfs: ${rootfs_how:-not reached})"
	echo "ci-boot: $passed passed, $failed failed"
}

# ---------------------------------------------------------------- inputs
[ "$(id -u)" = 0 ] || missing "needs root (mmdebstrap, systemd-nspawn, nsenter)"
for tool in systemd-nspawn:systemd-container mmdebstrap:mmdebstrap nsenter:util-linux \
	dpkg-parsechangelog:dpkg-dev sha256sum:coreutils tar:tar; do
	command -v "${tool%%:*}" >/dev/null || missing "${tool%%:*} is not installed (apt-get install ${tool#*:})"
done

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb_name=ams-agent_${version}_${arch}.deb
if [ -n "${AMS_AGENT_BOOT_DEB:-}" ]; then
	deb=$AMS_AGENT_BOOT_DEB
	[ -f "$deb" ] || fatal "AMS_AGENT_BOOT_DEB=$deb: no such file"
else
	deb=target/debian/$deb_name
	# What goes into the package; a change there means a new .deb.
	newer=""
	if [ -e "$deb" ]; then
		newer=$(find src units debian Cargo.toml Cargo.lock README.md docs/packaging.md \
			packaging/build-static.sh packaging/build-deb.sh packaging/third-party-licenses.sh \
			packaging/examples -newer "$deb" -type f -print -quit 2>/dev/null || true)
	fi
	if [ ! -e "$deb" ] || [ -n "$newer" ]; then
		step "build the package (${newer:+$newer is newer than }${newer:-no }$deb${newer:+)}"
		packaging/build-deb.sh
	fi
fi
echo "package: $deb ($(stat -c %s "$deb") bytes)"

# ---------------------------------------------------------------- teardown
uncached=""
nspawn_pid=""
leader=""
peer_pid=""
run=""
machine=ams-boot-$$
lockname=""
# alive PID: the process exists and is not a zombie.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# gone PID SECONDS: waits (bounded) for a process of ours to end.
gone() {
	local i
	for ((i = 0; i < $2 * 5; i++)); do
		alive "$1" || return 0
		sleep 0.2
	done
	! alive "$1"
}
# kill_tree PID: SIGKILL to a process of ours and its descendants (by id).
kill_tree() {
	local c
	for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do kill_tree "$c"; done
	kill -KILL "$1" 2>/dev/null
	kill -CONT "$1" 2>/dev/null
}
teardown() {
	local rc=$? p
	set +e
	trap - EXIT INT TERM ERR
	# The MongoDB peer first: EOF on its stdin ends it. (Left to the
	# container's shutdown it would be frozen by systemd's SIGSTOP broadcast,
	# and nsenter, its parent outside, stops itself too: a shutdown that waits
	# for a process nobody reaps.)
	if [ -n "${PEER[1]:-}" ]; then eval "exec ${PEER[1]}>&-"; fi
	if [ -n "$peer_pid" ] && ! gone "$peer_pid" 5; then
		echo "ci-boot: the MongoDB peer did not quit within 5s: killing it" >&2
		kill_tree "$peer_pid"
		gone "$peer_pid" 5
	fi
	# Commands still running inside (a trap in the middle of one): ended
	# before the poweroff, for the same reason.
	for p in $(cat /proc/$$/task/*/children 2>/dev/null); do
		[ "$p" = "$nspawn_pid" ] || kill_tree "$p"
	done
	local down=$(now_ms)
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		# SIGRTMIN+4 asks systemd for a clean poweroff.
		[ -z "$leader" ] || kill -s RTMIN+4 "$leader" 2>/dev/null
		if ! gone "$nspawn_pid" 30; then
			# SIGKILL to the container's PID 1 ends every process in it.
			echo "ci-boot: the container did not power off within 30s: killing its PID 1 ($leader) and systemd-nspawn ($nspawn_pid)" >&2
			[ -z "$leader" ] || kill -KILL "$leader" 2>/dev/null
			gone "$nspawn_pid" 10 || kill -KILL "$nspawn_pid" 2>/dev/null
		fi
		gone "$nspawn_pid" 10 && wait "$nspawn_pid" 2>/dev/null
	fi
	# What systemd-nspawn removes itself on a clean exit (not after a SIGKILL).
	rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
	[ -z "$lockname" ] || rm -f "/run/systemd/nspawn/locks/$lockname"
	if [ -n "$run" ] && [ -d "$run" ]; then
		if [ "$rc" != 0 ] && [ -s "$run/console.log" ]; then
			echo "--- container console (last 30 lines)" >&2
			tail -n 30 "$run/console.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
		fi
		if [ -n "$leader" ] && alive "$leader"; then
			echo "ci-boot: the container's PID 1 ($leader) is still there: $run left in place" >&2
		elif grep -qF " $(realpath "$run")/" /proc/self/mountinfo; then
			echo "ci-boot: something is still mounted under $run: left in place" >&2
		else
			rm -rf --one-file-system "$run"
		fi
	fi
	[ -z "$uncached" ] || rm -rf --one-file-system "$uncached"
	echo "ci-boot: torn down in $(awk -v a="$down" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')s (container powered off, its tree removed); $(elapsed)s in all"
	exit "$rc"
}
trap teardown EXIT
trap 'echo "ci-boot: interrupted (SIGINT): tearing the container down" >&2; exit 130' INT
trap 'echo "ci-boot: terminated (SIGTERM): tearing the container down" >&2; exit 143' TERM
# A command that fails outside a check: name it, count it, then the EXIT trap.
# (In the main shell only: a failing $(…) is reported where it is used.)
on_err() {
	[ "$BASHPID" = "$$" ] || return 0
	echo "ci-boot: FAIL: line $1: \`$2\` failed" >&2
	failed=$((failed + 1))
	failures+=("line $1: $2")
	[ -z "${leader:-}" ] || unit_journal_tail ams-agent.service 40
	summary
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------- rootfs
suite=bookworm
packages=(systemd systemd-sysv dbus passwd python3 python3-mockupdb python3-pymongo)
include=$(
	IFS=,
	echo "${packages[*]}"
)
mirror=${AMS_AGENT_BOOT_MIRROR:-}
recipe="suite=$suite variant=apt include=$include mirror=${mirror:-mmdebstrap-default} recipe=1"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
if [ -d target ]; then
	cache=target/boot
	mkdir -p "$cache"
else
	cache=$(mktemp -d /var/tmp/ams-boot.XXXXXX)
	uncached=$cache
	echo "(no target/ folder: the rootfs is built in $cache, removed at the end)"
fi
# One run at a time builds or prunes in this cache.
exec {cache_lock}>"$cache/.lock"
flock -w 900 "$cache_lock" || fatal "another ci-boot.sh holds $cache/.lock for more than 15 min"
tarball=$cache/rootfs-$key.tar

# Trees of earlier runs that were killed before their trap ran.
for d in "$cache"/run.*; do
	[ -d "$d" ] || continue
	owner=$(cat "$d/owner.pid" 2>/dev/null || echo)
	if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then
		rm -rf --one-file-system "$d"
	fi
done

if [ -s "$tarball" ]; then
	rootfs_how="cached $tarball"
	step "rootfs: cached ($tarball, $recipe)"
else
	step "rootfs: mmdebstrap $suite ($include), 15 min deadline"
	rm -f "$cache"/rootfs-*.tar "$cache"/rootfs-*.recipe "$cache"/.rootfs-*
	t=$(now_ms)
	partial=$cache/.rootfs-$key.partial
	# shellcheck disable=SC2086 # the mirror is one word or none
	if ! timeout 900 mmdebstrap --quiet --variant=apt --format=tar --include="$include" \
		"$suite" "$partial" $mirror >"$cache/mmdebstrap.log" 2>&1; then
		tail -n 30 "$cache/mmdebstrap.log" >&2
		rm -f "$partial"
		fatal "building the rootfs with mmdebstrap failed or ran past 15 min (log: $cache/mmdebstrap.log)"
	fi
	mv "$partial" "$tarball"
	printf '%s\n' "$recipe" >"$cache/rootfs-$key.recipe"
	rootfs_how="built in $(awk -v a="$t" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')s"
	echo "rootfs: $tarball ($(stat -c %s "$tarball") bytes), $rootfs_how"
fi


run=$(mktemp -d "$cache/run.XXXXXX")
echo $$ >"$run/owner.pid"
root=$run/root
mkdir "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
# systemd-nspawn's lock on the tree, named after its inode.
lockname=$(stat -c 'inode-%d:%i' "$root")

# ---------------------------------------------------------------- the tree
tdir=/opt/ams-boot-test
echo ams-boot-node >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	ams-boot-node
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
install -d -m 0755 "$root$tdir" "$root$tdir/www"
echo '<html><body>ams-agent boot test: AMS stand-in</body></html>' >"$root$tdir/www/index.html"
install -m 0755 tests/peers/mongo_peer.py "$root$tdir/mongo_peer.py"
install -m 0755 packaging/boot/registry.py "$root$tdir/registry.py"
install -m 0644 "$deb" "$root$tdir/$deb_name"
install -m 0644 packaging/boot/antmedia.service "$root/etc/systemd/system/antmedia.service"
rm -rf "$root/usr/local/antmedia"
cp -a examples/host/usr/local/antmedia "$root/usr/local/antmedia"
rand() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# Passwords with URI delimiters: the path through join's percent-encoding.
check_pw=check-$(rand)
pw1="b00t@pw:1/%?#-$(rand)"
pw2="b00t@pw:2/%?#-$(rand)"
(
	umask 077
	printf '%s\n' "$check_pw" >"$root$tdir/check-password"
	printf '%s\n' "$pw1" >"$root$tdir/pw1"
	printf '%s\n' "$pw2" >"$root$tdir/pw2"
)

# ---------------------------------------------------------------- boot
step "boot: systemd-nspawn -b --register=no --keep-unit --private-network -M $machine"
systemd-nspawn -D "$root" -b --register=no --keep-unit --private-network -M "$machine" \
	--link-journal=no --console=read-only </dev/null >"$run/console.log" 2>&1 &
nspawn_pid=$!

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, every 0.2 s.
wait_for() {
	local secs=$1 what=$2 end
	shift 2
	end=$(($(now_ms) + secs * 1000))
	until "$@" >/dev/null 2>&1; do
		if ! kill -0 "$nspawn_pid" 2>/dev/null; then
			echo "the container exited while waiting for $what" >&2
			return 1
		fi
		if [ "$(now_ms)" -ge "$end" ]; then
			echo "timed out after ${secs}s waiting for $what" >&2
			return 1
		fi
		sleep 0.2
	done
}
# The container's PID 1: systemd, a child of systemd-nspawn in another PID namespace.
find_leader() {
	local pid
	for pid in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
		if [ "$(readlink /proc/"$pid"/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] &&
			[ "$(cat /proc/"$pid"/comm 2>/dev/null)" = systemd ]; then
			leader=$pid
			return 0
		fi
	done
	return 1
}
wait_for 30 "the container's PID 1 (systemd) to start" find_leader ||
	fatal "systemd-nspawn did not start systemd (console log above)"
find_leader
socket_up() { [ -S "/proc/$leader/root/run/systemd/private" ]; }
wait_for 60 "/run/systemd/private inside the container (systemd's manager socket)" socket_up ||
	fatal "systemd in the container did not open /run/systemd/private"

# ct [-t SECONDS] COMMAND...: runs COMMAND inside the container (all its
# namespaces, its root), with a clean environment and a deadline.
ct() {
	local secs=120
	if [ "$1" = -t ]; then
		secs=$2
		shift 2
	fi
	# In the background and waited for: `wait` returns at once on SIGINT or
	# SIGTERM (a foreground child would delay the trap until it ends).
	nsenter -t "$leader" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		LANG=C.UTF-8 HOME=/root SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
		BOOT_CHECK_PASSWORD_FILE=$tdir/check-password \
		timeout -k 5 "$secs" "$@" &
	wait "$!"
}
unit_journal_tail() {
	[ -n "$leader" ] && kill -0 "$leader" 2>/dev/null || return 0
	echo "--- journalctl -u $1 (last $2 lines)" >&2
	ct -t 20 journalctl -u "$1" --no-pager -n "$2" -o short-monotonic >&2 || true
	echo "---" >&2
}
prop() { ct -t 20 systemctl show -p "$2" --value "$1"; }

state=$(ct -t 90 systemctl is-system-running --wait 2>&1 || true)
if [ "$state" = running ]; then
	ok "the container booted: systemd is PID 1, is-system-running says running ($(elapsed)s since start)"
else
	ct -t 20 systemctl --failed --no-pager --no-legend >&2 || true
	fatal "the container's systemd says '$state' after booting (failed units above), expected running"
fi
links=$(ct ls /sys/class/net | tr '\n' ' ')
routes=$(ct awk 'NR > 1' /proc/net/route | wc -l)
if [ "$links" = "lo " ] && [ "$routes" = 0 ]; then
	ok "private network: only loopback inside, no route (no metadata service, no internet)"
else
	fatal "the container has network interfaces '$links' and $routes IPv4 routes; expected loopback only"
fi

# ---------------------------------------------------------------- peers, AMS
step "the MongoDB peer, the AMS tree and the AMS stand-in inside the container"
coproc PEER {
	exec nsenter -t "$leader" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		python3 "$tdir/mongo_peer.py" --record "$tdir/peer.jsonl" --port 27017 --auth 2>"$run/peer.stderr"
}
peer_pid=$PEER_PID
if ! read -r -t 30 line <&"${PEER[0]}" || [ "$line" != "PORT 27017" ]; then
	cat "$run/peer.stderr" >&2
	fatal "the MongoDB peer did not say 'PORT 27017' within 30s (got '${line:-nothing}')"
fi
# peer LINE WHAT: one control line, answered "OK …" within 10 s (the line may
# hold a password: it is never printed).
peer() {
	local reply=""
	printf '%s\n' "$1" >&"${PEER[1]}"
	if ! read -r -t 10 reply <&"${PEER[0]}"; then
		cat "$run/peer.stderr" >&2
		fatal "the MongoDB peer did not answer within 10s to: $2"
	fi
	[ "${reply%% *}" = OK ] || fatal "the MongoDB peer refused: $2 (${reply%% *})"
}
peer "adduser {\"user\":\"boot-check\",\"pwd\":\"$check_pw\"}" "add the checker's user boot-check"
peer "adduser {\"user\":\"ams\",\"pwd\":\"$pw1\"}" "add the agent's user ams (first password)"
ok "MongoDB peer (MockupDB, SCRAM-SHA-256, authorization on) on 127.0.0.1:27017 inside"

ct useradd --system --user-group --home-dir /usr/local/antmedia --no-create-home \
	--shell /usr/sbin/nologin antmedia
ct chown -R antmedia:antmedia /usr/local/antmedia
ct find /usr/local/antmedia -type d -exec chmod 0755 {} +
ct find /usr/local/antmedia -type f -exec chmod 0640 {} +
red5=/usr/local/antmedia/conf/red5.properties
# The point of item 3: root without capabilities (the unit's
# CapabilityBoundingSet=) cannot read these files.
if ct setpriv --bounding-set=-all --inh-caps=-all cat "$red5" >/dev/null 2>"$run/setpriv.err"; then
	fatal "root without capabilities can read $red5 (0640 antmedia): the test would not test item 3"
elif grep -q 'Permission denied' "$run/setpriv.err"; then
	ok "AMS tree owned by antmedia, files 0640: root without capabilities cannot read $red5"
else
	fatal "setpriv cat $red5: $(cat "$run/setpriv.err")"
fi
ct systemctl daemon-reload
ct systemctl enable --now antmedia.service >/dev/null 2>&1
ams_up() { ct -t 5 python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:5080/", timeout=2)'; }
if wait_for 20 "the AMS stand-in to answer on 127.0.0.1:5080" ams_up; then
	ok "antmedia.service (stand-in) active and answering HTTP on 127.0.0.1:5080"
else
	unit_journal_tail antmedia.service 20
	fatal "antmedia.service (stand-in) does not answer on 127.0.0.1:5080"
fi

# What the file system holds before the package: compared after the purge.
listing() {
	ct -t 60 find / -xdev -path "$tdir" -prune -o -print | LC_ALL=C sort
}
listing >"$run/before.list"

# agent SECONDS LOG ARGS...: `ams-agent ARGS…` inside; its output is shown
# (on stderr when it failed) and kept in $run/LOG; its exit status returned.
agent() {
	local secs=$1 log=$run/$2 rc=0
	shift 2
	ct -t "$secs" ams-agent "$@" >"$log" 2>&1 || rc=$?
	if [ "$rc" = 0 ]; then sed 's/^/  | /' "$log"; else sed 's/^/  | /' "$log" >&2; fi
	return "$rc"
}
# unit_check ENABLED ACTIVE WHEN: ams-agent.service is-enabled / is-active.
unit_check() {
	local en act
	en=$(ct systemctl is-enabled ams-agent.service 2>&1 || true)
	act=$(ct systemctl is-active ams-agent.service 2>&1 || true)
	if [ "$en" = "$1" ] && [ "$act" = "$2" ]; then
		ok "$3: ams-agent.service $1 and $2"
	else
		bad "$3: ams-agent.service is '$en' and '$act', expected $1 and $2"
	fi
}

# ---------------------------------------------------------------- install
step "install the package with apt"
if ct -t 120 apt-get install -y --no-install-recommends "$tdir/$deb_name" >"$run/apt-install.log" 2>&1; then
	ok "apt-get install ./$deb_name"
else
	cat "$run/apt-install.log" >&2
	fatal "apt-get install ./$deb_name failed"
fi
unit_check disabled inactive "after install (neither enabled nor started)"

reg() { ct -t 30 python3 "$tdir/registry.py" "$@"; }
# doc_wait SECONDS WHAT EXPR: the node document once EXPR holds of `d`.
doc_wait() {
	local secs=$1
	[ "$secs" -ge 1 ] || secs=1
	ct -t $((secs + 15)) python3 "$tdir/registry.py" wait "$secs" "$2" "$3"
}
field() { reg wait 5 "$1" "d is not None" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# doc_check SECONDS EXPR OK FAIL: one check, waiting (bounded) for EXPR to hold
# of the document; on a timeout registry.py prints the last document seen.
doc_check() {
	if doc_wait "$1" "$3" "$2" >/dev/null; then ok "$3"; else bad "$4"; fi
}
pid_of_reporter() { prop ams-agent.service MainPID; }
cred_is() { # cred_is PWFILE: the reporter's credential holds that password
	ct -t 10 sh -c '[ "$(cat "/run/credentials/ams-agent.service/mongo-password")" = "$(cat "$1")" ]' sh "$1"
}

interval=5
join_args=(--mongo 127.0.0.1 --mongo-user ams --ip 192.0.2.10 --role origin
	--interval "${interval}s" --mongo-wait 60s --ams-wait 60s)

# ---------------------------------------------------------------- join
step "join with a password (LoadCredential=)"
agent 180 join1.log join "${join_args[@]}" --mongo-password-file "$tdir/pw1" ||
	fatal "ams-agent join (password) failed"
ok "ams-agent join --mongo 127.0.0.1 --mongo-user ams --mongo-password-file … exits 0"
unit_check enabled active "after join"
pid0=$(pid_of_reporter)
credir=$(ct -t 10 sh -c 'tr "\0" "\n" </proc/$1/environ | sed -n "s/^CREDENTIALS_DIRECTORY=//p"' sh "$pid0" || true)
if [ "$credir" = /run/credentials/ams-agent.service ] && cred_is "$tdir/pw1"; then
	ok "LoadCredential=: the reporter (PID $pid0) has \$CREDENTIALS_DIRECTORY=$credir holding the join's password"
else
	bad "the reporter (PID $pid0) has CREDENTIALS_DIRECTORY='$credir' and $( cred_is "$tdir/pw1" && echo the right || echo no) password in it"
fi
meta=$(ct stat -c '%a %U:%G' "$red5")
if [ "$meta" = "640 antmedia:antmedia" ]; then
	ok "after the password join $red5 is $meta (it holds the MongoDB password)"
else
	bad "after the password join $red5 is $meta, expected 640 antmedia:antmedia"
fi

# ---------------------------------------------------------------- one minute
step "one minute of heartbeats; item 3 (nodeGroup edited after the join); AMS down and up"
cursor=$(ct journalctl -u ams-agent.service -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
m0=$(now_ms)
h0=$(field 'd["heartbeats"]')
# Edited in place (same inode, owner and mode), as an operator's editor would.
ct sh -c 'sed "s/^nodeGroup=.*/nodeGroup=boot-edited/" "$1" >/tmp/red5.new && cat /tmp/red5.new >"$1" && rm /tmp/red5.new' sh "$red5"
[ "$(ct stat -c '%a %U:%G' "$red5")" = "640 antmedia:antmedia" ] || fatal "editing $red5 changed its owner or mode"
edited_ms=$(now_ms)

doc_check 15 'd and d["state"] == "ready" and d["ams"]["mode"] == "cluster" and d["privateIp"] == "192.0.2.10" and d["role"] == "origin"' \
	"the node document: ready, ams.mode cluster, privateIp 192.0.2.10, role origin" \
	"the node document is not ready/cluster/192.0.2.10/origin"
ct systemctl stop antmedia.service
doc_check $((2 * interval + 5)) 'd["ams"]["service"] == "inactive" and d["state"] == "degraded"' \
	"antmedia stopped: the document says degraded, ams.service inactive (systemctl is-active from inside the sandbox)" \
	"antmedia stopped: the document does not say degraded/inactive"
ct systemctl start antmedia.service
doc_check $((2 * interval + 10)) 'd["ams"]["service"] == "active" and d["state"] == "ready"' \
	"antmedia started again: the document says ready" \
	"antmedia started again: the document does not say ready"
# The reporter re-reads AMS's files every 60 s: the edit is due within
# 60 s + two heartbeats of it.
left=$(((edited_ms + (60 + 2 * interval + 5) * 1000 - $(now_ms)) / 1000))
if doc_wait "$left" "nodeGroup boot-edited (edited in $red5, 0640 antmedia), not marked as agent.toml's" \
	'd["nodeGroup"] == "boot-edited" and not d["ams"].get("fallback")' >/dev/null; then
	ok "item 3: nodeGroup edited after the password join is reported within $(awk -v a="$edited_ms" -v b="$(now_ms)" 'BEGIN { printf "%.0f", (b - a) / 1000 }')s (the reporter reads the 0640 antmedia files)"
else
	bad "item 3: nodeGroup edited in $red5 (0640 antmedia:antmedia) after the password join is not in the registry $((60 + 2 * interval + 5))s later (document says '$(field 'd.get("nodeGroup")' 2>/dev/null)'): the reporter, root without CAP_DAC_OVERRIDE, cannot read it and reports agent.toml's value"
fi
rest=$(((m0 + 60000 - $(now_ms)) / 1000))
[ "$rest" -le 0 ] || sleep "$rest"
h1=$(field 'd["heartbeats"]')
pid1=$(pid_of_reporter)
nrestarts=$(prop ams-agent.service NRestarts)
beats=$((h1 - h0))
if [ "$beats" -ge $((60 / interval - 2)) ] && [ "$pid1" = "$pid0" ] && [ "$nrestarts" = 0 ] &&
	[ "$(prop ams-agent.service SubState)" = running ]; then
	ok "heartbeating: $beats heartbeats in $(awk -v a="$m0" -v b="$(now_ms)" 'BEGIN { printf "%.0f", (b - a) / 1000 }')s at ${interval}s, same PID $pid0, NRestarts=0"
else
	bad "heartbeats: $beats in a minute at ${interval}s (want >= $((60 / interval - 2))), PID $pid0 -> $pid1, NRestarts=$nrestarts"
fi
denials='Permission denied|Operation not permitted|EPERM|EACCES|status=2[0-9][0-9]/|code=killed|Failed to set up|Failed with result|audit'
ct journalctl -u ams-agent.service --no-pager -o cat >"$run/journal1.txt"
ct journalctl -u ams-agent.service --no-pager -o cat --after-cursor "$cursor" >"$run/minute.txt"
if grep -Eq "$denials" "$run/journal1.txt"; then
	grep -E "$denials" "$run/journal1.txt" | sed 's/^/  | /' >&2
	bad "sandbox denial in journalctl -u ams-agent (lines above)"
else
	ok "no sandbox denial in journalctl -u ams-agent ($(wc -l <"$run/journal1.txt") lines: no Permission denied, Operation not permitted, EPERM, EACCES, status=2xx)"
fi
if grep -Eq '^[[:space:]]*(WARN|ERROR)[[:space:]]' "$run/minute.txt"; then
	grep -E '^[[:space:]]*(WARN|ERROR)[[:space:]]' "$run/minute.txt" | sed 's/^/  | /' >&2
	bad "the reporter logged warnings or errors during the minute (lines above)"
elif grep -q 'connected to MongoDB' "$run/journal1.txt"; then
	ok "the reporter logged 'connected to MongoDB' and no WARN/ERROR line during the minute"
else
	bad "the reporter never logged 'connected to MongoDB'"
fi

# ---------------------------------------------------------------- item 1
step "item 1: the password changes, join again: the reporter restarts with the new one"
inv1=$(prop ams-agent.service InvocationID)
pidr=$(pid_of_reporter)
peer "adduser {\"user\":\"ams\",\"pwd\":\"$pw2\"}" "replace the password of ams"
peer hangup "close every client connection (logins happen anew)"
old=0
reg login ams "$tdir/pw1" || old=$?
if [ "$old" = 1 ] && reg login ams "$tdir/pw2"; then
	ok "the peer refuses the old password and accepts the new one"
else
	fatal "the peer does not refuse the old password / accept the new one"
fi
if agent 180 join2.log join "${join_args[@]}" --mongo-password-file "$tdir/pw2"; then
	ok "ams-agent join with the new password exits 0"
else
	bad "ams-agent join with the new password failed"
fi
inv2=$(prop ams-agent.service InvocationID)
pid2=$(pid_of_reporter)
if [ "$inv2" != "$inv1" ] && [ "$pid2" != "$pidr" ] && [ "$pid2" != 0 ]; then
	ok "item 1: the re-join restarted the reporter (PID $pidr -> $pid2)"
	restarted=1
else
	bad "item 1: join printed success, but the reporter is the same process (PID $pidr, invocation unchanged) started before the re-join: LoadCredential= copied the old password at its start"
	restarted=0
fi
if cred_is "$tdir/pw2"; then
	ok "item 1: the running reporter's \$CREDENTIALS_DIRECTORY/mongo-password holds the new password"
else
	bad "item 1: the running reporter's \$CREDENTIALS_DIRECTORY/mongo-password still holds the old password"
fi
hb=$(field 'd["heartbeats"]')
doc_check $((3 * interval + 10)) "d['heartbeats'] > $((hb + 1)) and d['state'] == 'ready'" \
	"item 1: heartbeats go on after the password change (the reporter logs in with the new password)" \
	"item 1: no two heartbeats in $((3 * interval + 10))s after the re-join: the reporter cannot log in (old password)"
if [ "$restarted" = 1 ]; then
	ct journalctl -u ams-agent.service --no-pager -o cat _SYSTEMD_INVOCATION_ID="$inv2" >"$run/inv2.txt"
	if grep -q 'connected to MongoDB' "$run/inv2.txt" && ! grep -q 'refused the credentials' "$run/inv2.txt"; then
		ok "item 1: the restarted reporter logged 'connected to MongoDB', no refused credentials"
	else
		sed 's/^/  | /' "$run/inv2.txt" >&2
		bad "item 1: the restarted reporter did not connect cleanly (lines above)"
	fi
else
	# So that the checks below test what they name, not this failure.
	echo "(item 1 failed: restarting the reporter by hand so that the checks below stand on their own)"
	ct systemctl restart ams-agent.service
	doc_wait $((3 * interval + 10)) "a heartbeat after the manual restart" "d['heartbeats'] > $((hb + 1))" >/dev/null ||
		fatal "the reporter does not heartbeat even after a manual restart"
fi

# ---------------------------------------------------------------- mode
step "item 3: \`ams-agent mode standalone\` after the join is reported"
if agent 120 mode.log mode standalone --ip 192.0.2.10 --ams-wait 60s; then
	ok "ams-agent mode standalone exits 0"
else
	bad "ams-agent mode standalone failed"
fi
doc_check $((2 * interval + 10)) 'd["ams"]["mode"] == "standalone" and d["state"] == "ready" and not d["ams"].get("fallback")' \
	"item 3: the document says ams.mode standalone after \`mode standalone\`" \
	"item 3: \`mode standalone\` done after the password join is not reported (ams.mode stays cluster?)"

# ---------------------------------------------------------------- stop
step "systemctl stop marks the node left within TimeoutStopSec"
limit_us=$(ct systemd-analyze timespan "$(prop ams-agent.service TimeoutStopUSec)" | sed -n 's/^ *μs: //p')
limit_s=$((limit_us / 1000000))
doc_wait 10 "state ready before the stop" 'd["state"] == "ready"' >/dev/null || bad "the node is not ready before the stop"
s=$(now_ms)
ct -t $((limit_s + 30)) systemctl stop ams-agent.service
took=$(($(now_ms) - s))
st=$(field 'd["state"]')
result=$(prop ams-agent.service Result)
status=$(prop ams-agent.service ExecMainStatus)
if [ "$st" = left ] && [ "$took" -lt $((limit_s * 1000)) ] && [ "$result" = success ] && [ "$status" = 0 ]; then
	ok "systemctl stop: node left, took $((took))ms (TimeoutStopSec ${limit_s}s), Result=success, exit 0"
else
	bad "systemctl stop: state '$st', took ${took}ms (TimeoutStopSec ${limit_s}s), Result=$result, exit status $status"
fi
if ct journalctl -u ams-agent.service --no-pager -o cat -n 20 | grep -q 'is marked left'; then
	ok "the reporter logged 'node … is marked left'"
else
	bad "the reporter did not log that it marked the node left"
fi

# ---------------------------------------------------------------- leave
step "ams-agent leave"
ct systemctl start ams-agent.service
doc_wait $((3 * interval + 10)) "state ready after starting the reporter again" 'd["state"] == "ready"' >/dev/null ||
	bad "the reporter, started again, does not bring the node back to ready"
if agent 60 leave.log leave; then
	ok "ams-agent leave exits 0"
else
	bad "ams-agent leave failed"
fi
hl=$(field 'd["heartbeats"]')
unit_check disabled inactive "after leave"
if [ "$(field 'd["state"]')" = left ] && ! ct test -e /var/lib/ams-agent/joined.json; then
	ok "after leave: the node is left, no join record"
else
	bad "after leave: state $(field 'd["state"]'), joined.json $(ct test -e /var/lib/ams-agent/joined.json && echo present || echo absent)"
fi
sleep $((2 * interval))
if [ "$(field 'd["state"]')" = left ] && [ "$(field 'd["heartbeats"]')" = "$hl" ]; then
	ok "after leave: no heartbeat for $((2 * interval))s, still left"
else
	bad "after leave: the node came back (heartbeats $hl -> $(field 'd["heartbeats"]'))"
fi
ct journalctl -u ams-agent.service --no-pager -o cat >"$run/journal-all.txt"
if grep -Eq "$denials" "$run/journal-all.txt"; then
	grep -E "$denials" "$run/journal-all.txt" | sed 's/^/  | /' >&2
	bad "sandbox denial in journalctl -u ams-agent over the whole run (lines above)"
else
	ok "no sandbox denial in journalctl -u ams-agent over the whole run ($(wc -l <"$run/journal-all.txt") lines)"
fi

# ---------------------------------------------------------------- purge
step "apt purge removes everything"
if ct -t 120 apt-get purge -y ams-agent >"$run/apt-purge.log" 2>&1; then
	ok "apt-get purge -y ams-agent"
else
	cat "$run/apt-purge.log" >&2
	bad "apt-get purge ams-agent failed"
fi
listing >"$run/after.list"
# New since before the install, and not the business of the package:
# logs, apt's and dpkg's own databases and caches, the journal.
LC_ALL=C comm -13 "$run/before.list" "$run/after.list" >"$run/new.list"
grep -Ev '^/var/log(/|$)|^/var/cache/(apt|debconf|ldconfig)(/|$)|^/var/lib/apt(/|$)|^/var/lib/dpkg/(status|status-old|available|available-old|diversions-old|statoverride-old|lock|lock-frontend|triggers/.*)$|^/var/lib/systemd/(timers|catalog|random-seed|timesync)(/|$)' \
	"$run/new.list" >"$run/remains.list" || true
# Anything named after the agent is never the system's.
grep -E 'ams-agent' "$run/new.list" | grep -vxFf "$run/remains.list" >>"$run/remains.list" || true
run_left=$(ct find /run -xdev -name '*ams-agent*' 2>/dev/null || true)
pkg=$(ct dpkg-query -W -f '${db:Status-Status}' ams-agent 2>/dev/null || true)
units=$(ct systemctl list-unit-files --no-legend 'ams-agent*' 2>/dev/null || true)
echo "new paths after install, use and purge (logs, apt/dpkg state: not the package's):"
sed 's/^/  | /' "$run/new.list"
if [ ! -s "$run/remains.list" ] && [ -z "$run_left" ] && [ -z "$units" ] &&
	{ [ -z "$pkg" ] || [ "$pkg" = not-installed ]; }; then
	ok "after purge nothing remains: no new path outside logs and apt/dpkg state ($(wc -l <"$run/new.list") new paths, all theirs), no unit, nothing in /run"
else
	{
		echo "  remains after purge:"
		sed 's/^/  | /' "$run/remains.list"
		[ -z "$run_left" ] || printf '  | %s\n' $run_left
		[ -z "$units" ] || echo "  | unit files: $units"
		[ -z "$pkg" ] || echo "  | dpkg status: $pkg"
	} >&2
	bad "apt purge left files behind (listed above)"
fi

step "done"
summary
if [ "$failed" != 0 ]; then exit 1; fi
