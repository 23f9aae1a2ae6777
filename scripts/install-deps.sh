#!/usr/bin/env bash
# Install everything pgbouncer-py's tests need on Debian 12, idempotently: apt packages, the project venv at .venv,
# and (when run as root) the unprivileged test user. Used by scripts/test.sh; scripts/demo.sh does not use it.
#
# Run directly (`scripts/install-deps.sh`) or source it and call the functions:
#   install_apt_packages   apt-get the Debian packages below when any is missing (sudo when not root); services
#                          of newly installed packages are not started (policy-rc.d during the install)
#   ensure_venv            .venv with --system-site-packages and `pip install -e '.[test]'`
#   build_scanner          the optional C scanner, built in place (setup.py build_ext --inplace)
#   ensure_pgbouncer_124   unpack the real PgBouncer 1.24.1 (../shared/tools/pgbouncer-1.24) for comparison tests
#   ensure_test_user       root only: create $PGBTEST_USER (default pgbtest) and make the repo readable for it
#   install_deps           all of these (the user only when root)
# and, for the duration of a test run (scripts/test.sh, root only):
#   host_save_state        remember the pgbouncer service's state and net.ipv4.tcp_migrate_req
#   host_prepare_for_tests stop and disable Debian's pgbouncer service, set net.ipv4.tcp_migrate_req = 1
#   host_restore           put both back as host_save_state found them
# Environment: PGBTEST_USER (test user name), PGBTEST_SKIP_APT=1 (never call apt).

set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV="$REPO_ROOT/.venv"
PGBTEST_USER="${PGBTEST_USER:-pgbtest}"
PGBTEST_HOME="${PGBTEST_HOME:-/var/lib/$PGBTEST_USER}"

# What scripts/demo.sh needs too (it checks for the programs itself and installs only what is missing).
DEMO_APT_PACKAGES=(postgresql postgresql-client python3)
# What the tests need beyond that.
APT_PACKAGES=(
    pgbouncer
    python3-venv python3-dev gcc libc6-dev python3-uvloop python3-aiodns python3-cryptography python3-psycopg2
    procps util-linux ca-certificates valgrind
    python3-pampy libpam-pwdfile openssl iptables
    python3-ldap3 slapd ldap-utils
    prometheus-pgbouncer-exporter python3-prometheus-client
    default-jdk-headless libpostgresql-jdbc-java
)

_say() { printf '[install-deps] %s\n' "$*" >&2; }

_missing_apt_packages() {
    local pkg status
    for pkg in "${DEMO_APT_PACKAGES[@]}" "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [ "$status" = installed ] || printf '%s\n' "$pkg"
    done
}

# The package test (tests/packaging/test_deb.py) holds this lock while it swaps Debian's pgbouncer for ours: an
# install started meanwhile (a second test run on the same machine) would put pgbouncer back in the middle of it.
PKG_TEST_LOCK=/var/lock/pgbouncer-py-test-deb.lock

install_apt_packages() {
    if [ "$(id -u)" -ne 0 ] || [ -z "$(_missing_apt_packages)" ] || ! command -v flock >/dev/null 2>&1; then
        _install_apt_packages
        return
    fi
    local rc=0
    exec 9>>"$PKG_TEST_LOCK"
    if ! flock -n 9; then
        _say "waiting for the Debian package test running on this machine (it holds $PKG_TEST_LOCK)"
        flock -w 1800 9 || { _say "still locked after 30 minutes"; exec 9>&-; return 1; }
    fi
    _install_apt_packages || rc=$?
    exec 9>&-
    return "$rc"
}

_install_apt_packages() {
    local missing
    missing="$(_missing_apt_packages | tr '\n' ' ')"
    missing="${missing% }"
    if [ -z "$missing" ]; then
        return 0
    fi
    if [ "${PGBTEST_SKIP_APT:-0}" = 1 ]; then
        _say "missing Debian packages: $missing (PGBTEST_SKIP_APT=1, not installing)"
        return 1
    fi
    local -a sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            _say "missing Debian packages: $missing"
            _say "install them as root:  apt-get update && apt-get install -y $missing"
            return 1
        fi
    fi
    _say "installing Debian packages: $missing"
    # Keep package installs from starting services (pgbouncer on 6432, the postgresql main cluster):
    # policy-rc.d exit 101 is Debian's documented "action forbidden" answer for invoke-rc.d.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        created_policy=1
    fi
    local rc=0
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $missing
    } || rc=$?
    if [ "$created_policy" = 1 ]; then
        "${sudo[@]}" rm -f "$policy"
    fi
    if [ "$rc" -ne 0 ]; then
        _say "apt-get failed (exit $rc)"
        return "$rc"
    fi
}

ensure_venv() {
    local py=/usr/bin/python3
    [ -x "$py" ] || { _say "$py not found (apt package python3)"; return 1; }
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        _say "removing broken venv $VENV"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        _say "creating venv $VENV (system site packages)"
        "$py" -m venv --system-site-packages "$VENV"
    fi
    # Reinstall only when pyproject.toml changed (or the venv is new).
    local stamp="$VENV/.pgbouncer-py-deps" want
    # editable_mode=compat: a plain path entry, which comes before the system's dist-packages; the default finder hook
    # would lose to an installed Debian package of pgbouncer-py (the root package test installs one)
    local -a reqs=(--config-settings editable_mode=compat -e '.[test]' 'pytest>=8')
    want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1) ${reqs[*]} $("$VENV/bin/python" -VV | tr -d '\n')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    # ('pytest>=8': with --system-site-packages a Debian python3-pytest 7 installed by hand would satisfy
    # plain `pytest`, while a fresh machine gets PyPI's; ask for the PyPI one everywhere.)
    _say "pip install -e '.[test]'"
    (
        cd "$REPO_ROOT"
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install -q \
            --root-user-action=ignore "${reqs[@]}"
    )
    printf '%s' "$want" > "$stamp"
}

# PostgreSQL and the pooler refuse to run as root: tests run as this user.
ensure_test_user() {
    [ "$(id -u)" -eq 0 ] || return 0
    if ! id -u "$PGBTEST_USER" >/dev/null 2>&1; then
        _say "creating user $PGBTEST_USER"
        useradd --system --user-group --home-dir "$PGBTEST_HOME" --create-home \
            --shell /bin/sh "$PGBTEST_USER"
    fi
    mkdir -p "$PGBTEST_HOME"
    chown "$PGBTEST_USER:" "$PGBTEST_HOME"
    # The repo (and the venv in it) belong to root; the test user only needs to read them.
    if ! runuser -u "$PGBTEST_USER" -- test -r "$REPO_ROOT/pyproject.toml" -a -x "$VENV/bin/python"; then
        _say "making $REPO_ROOT readable for $PGBTEST_USER"
        local dir="$REPO_ROOT"
        while [ "$dir" != / ]; do
            chmod o+x "$dir"
            dir="$(dirname "$dir")"
        done
        chmod -R o+rX "$REPO_ROOT"
    fi
}

# The optional compiled scanner (pgbouncer_py/proto/_scan.c), built in place so that the tests, the demo and
# bench/ use it; without a compiler the pure-Python scanner (pgbouncer_py/proto/scan.py) is used instead.
build_scanner() {
    if ( cd "$REPO_ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace ) >/dev/null 2>&1; then
        return 0
    fi
    _say "the C scanner did not build (gcc, python3-dev?): the pure-Python scanner is used"
}

# The real PgBouncer 1.24.1 that comparison tests run beside ours (tests/pgutil.py binary="c124"): the shared tool
# ../shared/tools/pgbouncer-1.24 downloads Debian 13's package once and unpacks it (as root, under /opt, so the
# unprivileged test user can run it too). Without the shared directory the comparison tests fail and say why.
ensure_pgbouncer_124() {
    local tool="$REPO_ROOT/../shared/tools/pgbouncer-1.24"
    if [ ! -x "$tool" ]; then
        _say "$tool not found: the tests that compare with PgBouncer 1.24.1 will fail"
        return 0
    fi
    "$tool" --path >/dev/null || { _say "could not unpack PgBouncer 1.24.1 with $tool"; return 1; }
}

install_deps() {
    install_apt_packages
    ensure_venv
    build_scanner
    ensure_pgbouncer_124
    ensure_test_user
}

# ---- the host, while a test run lasts (root only) ---------------------------------------------------------
# Debian's pgbouncer package runs a service on port 6432 with /etc/pgbouncer and /run/postgresql/pgbouncer.pid:
# the package test (tests/packaging/test_deb.py) replaces that package with ours and runs our service in its
# place, so Debian's must not be running, nor be started by a package operation, while the suite runs.
# Rolling restarts with so_reuseport lose no connection only when the kernel migrates handshakes queued on a
# closing listener to its siblings (Linux >= 5.14, net.ipv4.tcp_migrate_req = 1); the tests of that need it.
HOST_PGB_WAS_RUNNING=0 HOST_PGB_WAS_ENABLED=0 HOST_PGB_LEFT_ALONE=0 HOST_MIGRATE_REQ="" HOST_SAVED=0
MIGRATE_REQ=/proc/sys/net/ipv4/tcp_migrate_req
PGB_PIDFILE=/run/postgresql/pgbouncer.pid

_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

_pgbouncer_service_running() {
    if _systemd && systemctl is-active --quiet pgbouncer.service 2>/dev/null; then
        return 0
    fi
    [ -s "$PGB_PIDFILE" ] && kill -0 "$(cat "$PGB_PIDFILE")" 2>/dev/null
}

_pgbouncer_service_enabled() {
    if _systemd; then
        systemctl is-enabled --quiet pgbouncer.service 2>/dev/null
    else
        ls /etc/rc2.d/S*pgbouncer >/dev/null 2>&1
    fi
}

# Call before install_deps: a pgbouncer package the installer adds is then left with its service disabled.
# A package test running on this machine (another test run) holds PKG_TEST_LOCK while it swaps the packages and
# runs the service itself: this run then leaves the service alone (and that test puts the machine back).
host_save_state() {
    [ "$(id -u)" -eq 0 ] || return 0
    if command -v flock >/dev/null 2>&1 && ! flock -n "$PKG_TEST_LOCK" true 2>/dev/null; then
        _say "a Debian package test is running on this machine: the pgbouncer service is left to it"
        HOST_PGB_LEFT_ALONE=1
    fi
    if [ "$HOST_PGB_LEFT_ALONE" = 0 ]; then
        _pgbouncer_service_running && HOST_PGB_WAS_RUNNING=1
        _pgbouncer_service_enabled && HOST_PGB_WAS_ENABLED=1
    fi
    if [ -r "$MIGRATE_REQ" ]; then
        HOST_MIGRATE_REQ="$(cat "$MIGRATE_REQ")"
    fi
    HOST_SAVED=1
}

host_prepare_for_tests() {
    [ "$(id -u)" -eq 0 ] || return 0
    if [ "$HOST_PGB_LEFT_ALONE" = 1 ]; then
        :
    elif _pgbouncer_service_running; then
        _say "stopping Debian's pgbouncer service for the test run (it is started again afterwards)"
        if _systemd; then
            systemctl stop pgbouncer.service >/dev/null 2>&1 || true
        else
            /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
        fi
    fi
    if [ "$HOST_PGB_LEFT_ALONE" = 0 ] && _pgbouncer_service_enabled; then
        _say "disabling Debian's pgbouncer service for the test run (enabled again afterwards)"
        if _systemd; then
            systemctl disable pgbouncer.service >/dev/null 2>&1 || true
        else
            update-rc.d pgbouncer disable >/dev/null 2>&1 || true
        fi
    fi
    if [ -w "$MIGRATE_REQ" ] && [ "$(cat "$MIGRATE_REQ")" != 1 ]; then
        _say "net.ipv4.tcp_migrate_req = 1 for the test run (was ${HOST_MIGRATE_REQ:-?}; restored afterwards)"
        echo 1 > "$MIGRATE_REQ" 2>/dev/null || true
    fi
}

host_restore() {
    [ "$(id -u)" -eq 0 ] && [ "$HOST_SAVED" = 1 ] || return 0
    if [ -n "$HOST_MIGRATE_REQ" ] && [ -w "$MIGRATE_REQ" ] && [ "$(cat "$MIGRATE_REQ")" != "$HOST_MIGRATE_REQ" ]; then
        _say "net.ipv4.tcp_migrate_req back to $HOST_MIGRATE_REQ"
        echo "$HOST_MIGRATE_REQ" > "$MIGRATE_REQ" 2>/dev/null || true
    fi
    [ "$HOST_PGB_LEFT_ALONE" = 0 ] || return 0
    # (if the package test left Debian's pgbouncer uninstalled, there is no service to give back)
    [ -x /etc/init.d/pgbouncer ] || [ -e /lib/systemd/system/pgbouncer.service ] || return 0
    if [ "$HOST_PGB_WAS_ENABLED" = 1 ] && ! _pgbouncer_service_enabled; then
        _say "enabling Debian's pgbouncer service again"
        if _systemd; then
            systemctl enable pgbouncer.service >/dev/null 2>&1 || true
        else
            update-rc.d pgbouncer enable >/dev/null 2>&1 || true
        fi
    fi
    if [ "$HOST_PGB_WAS_RUNNING" = 1 ] && ! _pgbouncer_service_running; then
        _say "starting Debian's pgbouncer service again"
        if _systemd; then
            systemctl start pgbouncer.service >/dev/null 2>&1 || _say "could not start pgbouncer.service"
        else
            /etc/init.d/pgbouncer start >/dev/null 2>&1 || _say "could not start /etc/init.d/pgbouncer"
        fi
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    install_deps
fi
