#!/usr/bin/env bash
# Install everything pgbouncer-py's tests and demo need on Debian 12, idempotently:
# apt packages, the project venv at .venv, and (when run as root) the unprivileged test user.
#
# Run directly (`scripts/install-deps.sh`) or source it and call the functions:
#   install_apt_packages   apt-get the Debian packages below when any is missing (sudo when not root)
#   ensure_venv            .venv with --system-site-packages and `pip install -e '.[test]'`
#   build_scanner          the optional C scanner, built in place (setup.py build_ext --inplace)
#   ensure_pgbouncer_124   unpack the real PgBouncer 1.24.1 (../shared/tools/pgbouncer-1.24) for comparison tests
#   ensure_test_user       root only: create $PGBTEST_USER (default pgbtest) and make the repo readable for it
#   install_deps           all of these (the user only when root)
# Environment: PGBTEST_USER (test user name), PGBTEST_SKIP_APT=1 (never call apt).

set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV="$REPO_ROOT/.venv"
PGBTEST_USER="${PGBTEST_USER:-pgbtest}"
PGBTEST_HOME="${PGBTEST_HOME:-/var/lib/$PGBTEST_USER}"

APT_PACKAGES=(
    postgresql postgresql-client pgbouncer
    python3 python3-venv python3-dev gcc libc6-dev python3-uvloop python3-aiodns python3-cryptography python3-psycopg2
    procps util-linux ca-certificates valgrind
    python3-pampy libpam-pwdfile openssl iptables
    python3-ldap3 slapd ldap-utils
    prometheus-pgbouncer-exporter python3-prometheus-client
    default-jdk-headless libpostgresql-jdbc-java
)

_say() { printf '[install-deps] %s\n' "$*" >&2; }

_missing_apt_packages() {
    local pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [ "$status" = installed ] || printf '%s\n' "$pkg"
    done
}

# Debian's pgbouncer package enables an init service on port 6432; the tests need that port free
# and no stray pooler around. Stop and disable it, with or without systemd as PID 1.
_disable_pgbouncer_service() {
    [ "$(id -u)" -eq 0 ] || return 0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now pgbouncer.service pgbouncer.socket >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/pgbouncer ]; then
        local pidfile=/run/postgresql/pgbouncer.pid
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            _say "stopping the pgbouncer system service"
            /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1 && ls /etc/rc2.d/S*pgbouncer >/dev/null 2>&1; then
            update-rc.d pgbouncer disable >/dev/null 2>&1 || true
        fi
    fi
}

install_apt_packages() {
    local missing
    missing="$(_missing_apt_packages | tr '\n' ' ')"
    missing="${missing% }"
    if [ -z "$missing" ]; then
        _disable_pgbouncer_service
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
    if [ "$(id -u)" -eq 0 ]; then
        _disable_pgbouncer_service
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

# Rolling restarts with so_reuseport lose no connection only when the kernel migrates handshakes queued on a
# closing listener to its siblings (Linux >= 5.14, net.ipv4.tcp_migrate_req). Best effort: root only.
enable_tcp_migrate_req() {
    if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/net/ipv4/tcp_migrate_req ]; then
        echo 1 > /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || true
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
    enable_tcp_migrate_req
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    install_deps
fi
