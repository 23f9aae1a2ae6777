#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL in a temporary directory, pgbouncer-py in front of it (transaction pooling),
# SHOW POOLS before, during and after a connect-per-transaction workload, and that workload's tps straight to
# PostgreSQL vs through the pooler. Everything it starts and writes is removed at the end, also on ^C.
#
# What it needs: PostgreSQL's server and client programs (initdb, pg_ctl, postgres, psql, pgbench) and Debian's
# /usr/bin/python3 (>= 3.11; pgbouncer-py runs from this checkout on the standard library alone). When something
# is missing it names the Debian packages and installs exactly those with apt-get (as root, or through sudo),
# after saying so; DEMO_NO_INSTALL=1 only prints the command. It never stops, disables or reconfigures a service,
# never writes a sysctl and never creates a user.
#
# Run as a normal user, or as root: PostgreSQL and the pooler refuse root, so they then run as an existing
# unprivileged account: DEMO_USER if set, else the user who called sudo, else `postgres` (the account Debian's
# PostgreSQL package creates), else `nobody`.
#
# Environment: PG_BINDIR picks the PostgreSQL installation (default: the newest /usr/lib/postgresql/*/bin);
# DEMO_SECONDS (default 5) is the length of each pgbench run; DEMO_CLIENTS (default 10) the number
# of pgbench clients; DEMO_AUTH (md5, the default, or scram-sha-256) the password method of both paths;
# PGBOUNCER_BIN=/usr/sbin/pgbouncer runs the same demo with another pooler binary.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=/usr/bin/python3
DEMO_SECONDS="${DEMO_SECONDS:-5}"
DEMO_CLIENTS="${DEMO_CLIENTS:-10}"
DEMO_AUTH="${DEMO_AUTH:-md5}"
POOL_SIZE=5

say() { printf 'demo: %s\n' "$*"; }
section() { printf '\n### %s\n' "$*"; }

# The PostgreSQL bin directory holding everything the demo runs ("" when none does): $PG_BINDIR when set,
# else the newest /usr/lib/postgresql/*/bin.
find_pg_bindir() {
    local dir candidates
    candidates="${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)}"
    for dir in $candidates; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && [ -x "$dir/psql" ] &&
            [ -x "$dir/pgbench" ]; then
            echo "$dir"
            return 0
        fi
    done
}

# The Debian packages for what is missing (scripts/install-deps.sh's DEMO_APT_PACKAGES, as the tests need them too).
missing_packages() {
    [ -n "$(find_pg_bindir)" ] || echo "postgresql postgresql-client"
    if ! [ -x "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo python3
    fi
}

# Install the missing packages, or say which command would. Nothing else of the host is touched.
ensure_packages() {
    local missing
    missing="$(missing_packages | tr '\n' ' ')"
    missing="${missing% }"
    [ -n "$missing" ] || return 0
    local install="apt-get update && apt-get install --no-install-recommends $missing"
    say "missing Debian packages: $missing"
    say "(Debian's postgresql package also sets up and starts its own cluster 'main' on port 5432, as it always"
    say " does; the demo does not use it: it runs a private PostgreSQL of its own)"
    if [ "${DEMO_NO_INSTALL:-0}" = 1 ]; then
        say "install them, then run the demo again:  sudo sh -c '$install'"
        exit 1
    fi
    local -a sudo=() yes=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            say "install them as root, then run the demo again:  su -c '$install'"
            exit 1
        fi
        sudo=(sudo)
    fi
    [ -t 0 ] || yes=(-y)   # on a terminal apt-get lists what it installs and asks first
    say "installing them now:  ${sudo[*]:+${sudo[*]} }sh -c '$install'"
    if ! "${sudo[@]}" apt-get update -q || ! "${sudo[@]}" apt-get install "${yes[@]}" --no-install-recommends $missing
    then
        say "the install did not go through; install them as root, then run the demo again:  $install"
        exit 1
    fi
    missing="$(missing_packages | tr '\n' ' ')"
    if [ -n "${missing% }" ]; then
        say "still missing after apt-get: $missing"
        exit 1
    fi
}

# ---- as root: hand the demo to an existing unprivileged account -------------------------------------------
run_as_unprivileged() {
    local user="${DEMO_USER:-}"
    if [ -z "$user" ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        user="$SUDO_USER"
    fi
    if [ -z "$user" ]; then
        for user in postgres nobody; do
            id -u "$user" >/dev/null 2>&1 && break
        done
    fi
    if ! id -u "$user" >/dev/null 2>&1 || [ "$(id -u "$user")" -eq 0 ]; then
        say "PostgreSQL and the pooler do not run as root, and '$user' is not an existing unprivileged user:"
        say "run the demo as a normal user, or name one with DEMO_USER=name (the demo creates no user)"
        exit 1
    fi
    say "running as root: PostgreSQL and the pooler refuse root, so they run as the existing user '$user'"
    say "(DEMO_USER=name picks another; no user is created)"
    # A private copy of the program, readable by that user wherever this checkout lives; removed at the end.
    # (In /tmp, not $TMPDIR: root's TMPDIR may be out of that user's reach.)
    local work
    work="$(mktemp -d /tmp/pgbouncer-py-demo.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir "$work/src"
    cp -r "$REPO_ROOT/pgbouncer_py" "$work/src/"
    cp "$REPO_ROOT/scripts/demo.sh" "$work/demo.sh"
    find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
    chown -R "$user:" "$work"
    local rc=0
    PATH="$PATH:/usr/sbin:/sbin" runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin LANG="${LANG:-C.UTF-8}" HOME="$work" \
        DEMO_SECONDS="$DEMO_SECONDS" DEMO_CLIENTS="$DEMO_CLIENTS" DEMO_AUTH="$DEMO_AUTH" PGBOUNCER_BIN="${PGBOUNCER_BIN:-}" \
        PG_BINDIR="$BINDIR" DEMO_WORK="$work" DEMO_SRC="$work/src" bash "$work/demo.sh" || rc=$?
    exit "$rc"
}

ensure_packages
BINDIR="$(find_pg_bindir)"
if [ "$(id -u)" -eq 0 ]; then
    run_as_unprivileged
fi

# ---- the demo proper, as an unprivileged user ---------------------------------------------------------------
for v in $(compgen -e | grep '^PG' || true); do    # the user's PGHOST, PGPORT, ... must not redirect psql
    case "$v" in PGBOUNCER_BIN|PG_BINDIR) ;; *) unset "$v" ;; esac
done
SRC="${DEMO_SRC:-$REPO_ROOT}"
TMP="${TMPDIR:-/tmp}"
[ "${#TMP}" -le 60 ] || TMP=/tmp    # PostgreSQL's unix socket goes in the work directory: keep its path short
WORK="${DEMO_WORK:-$(mktemp -d "$TMP/pgbouncer-py-demo.XXXXXX")}"
PG_STARTED=0 POOLER_PID="" PGBENCH_PID=""
export PYTHONDONTWRITEBYTECODE=1   # leave no __pycache__ behind in the checkout

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    if [ -n "$PGBENCH_PID" ]; then
        kill "$PGBENCH_PID" 2>/dev/null
        wait "$PGBENCH_PID" 2>/dev/null
    fi
    if [ -n "$POOLER_PID" ] && kill -0 "$POOLER_PID" 2>/dev/null; then
        kill -INT "$POOLER_PID"     # safe shutdown; it has nothing to wait for once the clients are gone
        for _ in $(seq 50); do kill -0 "$POOLER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$POOLER_PID" 2>/dev/null
        wait "$POOLER_PID" 2>/dev/null
    fi
    if [ "$PG_STARTED" = 1 ]; then
        "$BINDIR/pg_ctl" stop -D "$WORK/data" -m immediate -w >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    # to the demo's own stdout: an interrupt may run this inside a command whose output goes to a file
    printf '\ndemo: stopped PostgreSQL and the pooler, removed %s\n' "$WORK" >&3
    exit "$rc"
}
exec 3>&1
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$DEMO_AUTH" in
    md5|scram-sha-256) ;;
    *) say "DEMO_AUTH must be md5 or scram-sha-256, not '$DEMO_AUTH'"; exit 1 ;;
esac
PG_PORT="$(free_port)"
section "a throwaway PostgreSQL $("$BINDIR/postgres" --version | sed 's/^postgres (PostgreSQL) //'): $WORK/data, port $PG_PORT"
"$BINDIR/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C --no-instructions \
    >"$WORK/initdb.log"
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 100
fsync = off
synchronous_commit = off
password_encryption = '$DEMO_AUTH'
EOF
cat > "$WORK/data/pg_hba.conf" <<EOF
local all postgres trust
host all all 127.0.0.1/32 $DEMO_AUTH
EOF
PG_STARTED=1
if ! "$BINDIR/pg_ctl" start -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 >/dev/null; then
    say "PostgreSQL did not start; its log:"; cat "$WORK/postgres.log"; exit 1
fi
as_postgres() { "$BINDIR/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
as_postgres -c "CREATE ROLE demo LOGIN PASSWORD 'demopass'" -c "CREATE DATABASE demo OWNER demo"
export PGPASSWORD=demopass
"$BINDIR/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U demo demo >"$WORK/pgbench-init.log" 2>&1
say "database demo with pgbench's tables (scale 1); user demo logs in with $DEMO_AUTH"

POOLER_PORT="$(free_port)"
# userlist.txt holds the hash PostgreSQL stores, not the password: the pooler checks the client's password
# against it and logs in to PostgreSQL with it, as PgBouncer does.
as_postgres -At -c "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid WHERE rolname = 'demo'" \
    > "$WORK/userlist.txt"
cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
demo = host=127.0.0.1 port=$PG_PORT dbname=demo

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLER_PORT
unix_socket_dir = $WORK
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
auth_type = $DEMO_AUTH
auth_file = $WORK/userlist.txt
admin_users = demo
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 200
EOF
if [ -n "${PGBOUNCER_BIN:-}" ]; then
    POOLER_CMD=("$PGBOUNCER_BIN" "$WORK/pgbouncer.ini")
else
    POOLER_CMD=(env PYTHONPATH="$SRC" "$PY" -m pgbouncer_py "$WORK/pgbouncer.ini")
fi
section "the pooler on port $POOLER_PORT: transaction pooling, default_pool_size = $POOL_SIZE ($WORK/pgbouncer.ini)"
grep -v '^$' "$WORK/pgbouncer.ini"
(cd "$WORK" && exec "${POOLER_CMD[@]}" </dev/null >/dev/null 2>"$WORK/pooler.stderr") &
POOLER_PID=$!
for _ in $(seq 200); do
    grep -q "process up" "$WORK/pgbouncer.log" 2>/dev/null && break
    if ! kill -0 "$POOLER_PID" 2>/dev/null; then
        say "the pooler exited while starting:"; cat "$WORK/pooler.stderr"; exit 1
    fi
    sleep 0.1
done
if ! grep -q "process up" "$WORK/pgbouncer.log" 2>/dev/null; then
    say "the pooler did not log 'process up' within 20 s:"; cat "$WORK/pooler.stderr"; exit 1
fi
grep "process up" "$WORK/pgbouncer.log"

pooled() { "$BINDIR/psql" -X -h 127.0.0.1 -p "$POOLER_PORT" -U demo "$@"; }
# SHOW POOLS, the columns that tell the story (the console answers SHOW only, so the columns are picked here).
show_pools() {
    pooled -d pgbouncer -A -F '|' -P footer=off -c "SHOW POOLS" | awk -F '|' '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
        { printf "%-10s %-10s %9s %10s %9s %7s %7s %7s %9s\n", $col["database"], $col["user"], $col["cl_active"],
              $col["cl_waiting"], $col["sv_active"], $col["sv_idle"], $col["sv_used"], $col["maxwait"],
              $col["pool_mode"] }'
}
# Server sessions PostgreSQL has started for database demo (pg_stat_database.sessions).
sessions() {
    as_postgres -At -c "SELECT pg_stat_clear_snapshot()" \
        -c "SELECT sessions FROM pg_stat_database WHERE datname = 'demo'" | tail -n 1
}
# pgbench -C: every transaction opens a new connection, logs in, runs one SELECT and disconnects.
bench() {
    "$BINDIR/pgbench" -n -S -C -c "$DEMO_CLIENTS" -j 2 -T "$DEMO_SECONDS" -h 127.0.0.1 -p "$1" -U demo demo 2>&1
}
tps_of() { sed -n 's/^tps = \([0-9]*\).*/\1/p' "$1" | head -n 1; }
xacts_of() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1"; }

section "psql through the pooler"
pooled -d demo -c "SELECT current_user, current_database(), inet_server_port() AS postgresql_port,
                          count(*) AS accounts FROM pgbench_accounts"

section "SHOW POOLS before the workload (psql -h 127.0.0.1 -p $POOLER_PORT -U demo pgbouncer)"
show_pools

section "pgbench -C -S: $DEMO_CLIENTS clients for $DEMO_SECONDS s, every transaction on a new connection"
s0="$(sessions)"
say "straight to PostgreSQL (port $PG_PORT) ..."
bench "$PG_PORT" > "$WORK/direct.out" || { cat "$WORK/direct.out"; exit 1; }
s1="$(sessions)"
say "through the pooler (port $POOLER_PORT) ..."
bench "$POOLER_PORT" > "$WORK/pooled.out" &
PGBENCH_PID=$!
sleep "$("$PY" -c "print($DEMO_SECONDS / 2)")"
section "SHOW POOLS during the workload: $DEMO_CLIENTS clients come and go over at most $POOL_SIZE server connections"
show_pools
wait "$PGBENCH_PID" || { PGBENCH_PID=""; cat "$WORK/pooled.out"; exit 1; }
PGBENCH_PID=""
s2="$(sessions)"

section "SHOW POOLS after the workload: the server connections stay open for the next clients"
show_pools

section "result: a new connection for every transaction, $DEMO_CLIENTS clients, $DEMO_SECONDS s"
printf '%-24s %8s %13s %17s\n' "" "tps" "connections" "server sessions"
printf '%-24s %8s %13s %17s\n' "straight to PostgreSQL" "$(tps_of "$WORK/direct.out")" \
    "$(xacts_of "$WORK/direct.out")" "$((s1 - s0))"
printf '%-24s %8s %13s %17s\n' "through the pooler" "$(tps_of "$WORK/pooled.out")" \
    "$(xacts_of "$WORK/pooled.out")" "$((s2 - s1))"
say "every connection straight to PostgreSQL starts a server process (a session); through the pooler the"
say "connections share the few sessions of the pool, so connecting costs far less"

section "the last lines of the pooler's log"
tail -n 4 "$WORK/pgbouncer.log"
