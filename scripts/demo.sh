#!/usr/bin/env bash
# Demo: a throwaway PostgreSQL in a temp dir, pgbouncer-py in front of it in transaction pooling mode,
# a short pgbench run and a few psql queries (including the admin console), then everything is removed.
# PGBOUNCER_BIN=/usr/sbin/pgbouncer scripts/demo.sh runs the same demo against another pooler binary.
# DEMO_SECONDS (default 10) is the pgbench duration.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/install-deps.sh
source "$REPO_ROOT/scripts/install-deps.sh"

if [ "${1:-}" != --inner ]; then
    install_deps
    if [ "$(id -u)" -eq 0 ]; then
        echo "demo: PostgreSQL and the pooler do not run as root: continuing as user $PGBTEST_USER"
        exec runuser -u "$PGBTEST_USER" -- env HOME="$PGBTEST_HOME" USER="$PGBTEST_USER" LOGNAME="$PGBTEST_USER" \
            PATH="/usr/local/bin:/usr/bin:/bin" PGBOUNCER_BIN="${PGBOUNCER_BIN:-}" \
            DEMO_SECONDS="${DEMO_SECONDS:-10}" PYTHONDONTWRITEBYTECODE=1 \
            bash "$REPO_ROOT/scripts/demo.sh" --inner
    fi
    exec bash "$REPO_ROOT/scripts/demo.sh" --inner
fi

# ---- inner part: runs as an unprivileged user -----------------------------------------------------
for v in $(compgen -e | grep '^PG' || true); do
    case "$v" in PGBOUNCER_BIN) ;; *) unset "$v" ;; esac
done
BINDIR="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
PY="$VENV/bin/python"
WORK="$(mktemp -d /tmp/pgb-demo.XXXXXX)"
PG_PID="" POOLER_PID=""

cleanup() {
    set +e
    if [ -n "$POOLER_PID" ] && kill -0 "$POOLER_PID" 2>/dev/null; then
        kill -INT "$POOLER_PID"
        for _ in $(seq 50); do kill -0 "$POOLER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$POOLER_PID" 2>/dev/null && kill -KILL "$POOLER_PID"
    fi
    if [ -n "$PG_PID" ]; then
        "$BINDIR/pg_ctl" stop -D "$WORK/data" -m fast -w >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    echo "demo: cleaned up $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n### %s\n' "$*"; }
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PG_PORT="$(free_port)"
say "PostgreSQL: initdb in $WORK/data, port $PG_PORT"
"$BINDIR/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C --no-instructions >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
max_connections = 50
EOF
cat > "$WORK/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
"$BINDIR/pg_ctl" start -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 >/dev/null
PG_PID="$(head -n 1 "$WORK/data/postmaster.pid")"
"$BINDIR/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 <<EOF
CREATE ROLE demo LOGIN PASSWORD 'demopass';
CREATE DATABASE demo OWNER demo;
EOF
"$BINDIR/pgbench" -i -q -s 1 -h "$WORK" -p "$PG_PORT" -U demo demo 2>&1 | tail -n 1

POOLER_PORT="$(free_port)"
cat > "$WORK/userlist.txt" <<EOF
"demo" "demopass"
EOF
cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
demo = host=127.0.0.1 port=$PG_PORT dbname=demo

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLER_PORT
unix_socket_dir = $WORK
logfile = $WORK/pgbouncer.log
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
admin_users = demo
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
EOF
if [ -n "${PGBOUNCER_BIN:-}" ]; then
    POOLER_CMD=("$PGBOUNCER_BIN" "$WORK/pgbouncer.ini")
else
    POOLER_CMD=("$PY" -m pgbouncer_py "$WORK/pgbouncer.ini")
fi
say "pooler: ${POOLER_CMD[*]} (transaction pooling, port $POOLER_PORT)"
(cd "$WORK" && exec "${POOLER_CMD[@]}" </dev/null 2>"$WORK/pooler.stderr") &
POOLER_PID=$!
for _ in $(seq 200); do
    grep -q "process up" "$WORK/pgbouncer.log" 2>/dev/null && break
    if ! kill -0 "$POOLER_PID" 2>/dev/null; then
        echo "demo: the pooler exited while starting:"; cat "$WORK/pooler.stderr"; exit 1
    fi
    sleep 0.1
done
if ! grep -q "process up" "$WORK/pgbouncer.log" 2>/dev/null; then
    echo "demo: the pooler did not log 'process up' within 20 s:"; cat "$WORK/pooler.stderr"; exit 1
fi
grep "process up" "$WORK/pgbouncer.log"

export PGPASSWORD=demopass
through_pooler() { "$BINDIR/psql" -X -h 127.0.0.1 -p "$POOLER_PORT" -U demo "$@"; }

say "psql through the pooler"
through_pooler -d demo -c "SELECT current_user, current_database(), inet_server_port() AS server_port"
through_pooler -d demo -c "SELECT count(*) AS accounts FROM pgbench_accounts"

say "pgbench through the pooler: 20 clients, ${DEMO_SECONDS:-10} s"
"$BINDIR/pgbench" -n -c 20 -j 2 -T "${DEMO_SECONDS:-10}" -P 2 -h 127.0.0.1 -p "$POOLER_PORT" -U demo demo 2>&1 \
    | grep -E "^(progress|number of|latency average|tps|transaction type|scaling factor|query mode)"

say "admin console (database pgbouncer)"
through_pooler -d pgbouncer -c "SHOW VERSION"
through_pooler -d pgbouncer -c "SHOW POOLS"
through_pooler -d pgbouncer -c "SHOW STATS"

say "server connections seen by PostgreSQL (at most default_pool_size = 4 for 20 clients)"
"$BINDIR/psql" -X -h "$WORK" -p "$PG_PORT" -U postgres -d postgres \
    -c "SELECT usename, datname, count(*) FROM pg_stat_activity WHERE datname = 'demo' GROUP BY 1, 2"

say "last lines of the pooler log"
tail -n 5 "$WORK/pgbouncer.log"
