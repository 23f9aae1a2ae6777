#!/usr/bin/env bash
# The one-command test run: install what is missing (scripts/install-deps.sh), ruff, then pytest.
# As root, pytest runs as the unprivileged $PGBTEST_USER (PostgreSQL and the pooler refuse root)
# with -m "not root" (twice when the C scanner is built: on it, then pure Python), then as root with -m root.
# As root it also changes two things of the host while it runs, and puts them back at the end (README.md, Tests):
# Debian's pgbouncer service is stopped and disabled, net.ipv4.tcp_migrate_req is set to 1.
# Extra arguments go to pytest: scripts/test.sh -k config

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# shellcheck source=scripts/install-deps.sh
source "$REPO_ROOT/scripts/install-deps.sh"

t0=$SECONDS
_step() { printf '\n=== %s\n' "$*"; }
_elapsed() { printf '%dm%02ds' $(( ($1) / 60 )) $(( ($1) % 60 )); }

RUN_TMP=""
finish() {
    if [ -n "$RUN_TMP" ]; then
        if [ "${PGBTEST_KEEP_TMP:-0}" = 1 ]; then
            echo "test.sh: keeping $RUN_TMP"
        else
            rm -rf "$RUN_TMP"
        fi
    fi
    host_restore
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

_step "install dependencies"
host_save_state
install_deps
host_prepare_for_tests
t_install=$((SECONDS - t0))

export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="$VENV/bin/python"
SAFE_PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

"$PY" - <<'EOF'
import platform, subprocess
mods = []
for name in ("cryptography", "uvloop", "psycopg", "psycopg2", "asyncpg", "pytest"):
    try:
        mod = __import__(name)
        mods.append(f"{name} {getattr(mod, '__version__', '?').split(' ')[0]}")
    except ImportError:
        mods.append(f"{name} missing")
pgb = subprocess.run(["/usr/sbin/pgbouncer", "--version"], capture_output=True, text=True).stdout.splitlines()
print(f"python {platform.python_version()}; " + "; ".join(mods) + f"; {pgb[0] if pgb else 'no /usr/sbin/pgbouncer'}")
EOF

_step "ruff check pgbouncer_py tests"
t1=$SECONDS
ruff_rc=0
"$VENV/bin/ruff" check --no-cache pgbouncer_py tests || ruff_rc=$?
t_ruff=$((SECONDS - t1))

RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/pgbtest-run.XXXXXX")"
chmod 755 "$RUN_TMP"

# counts FILE -> "passed failed skipped" from a pytest junit xml ("" when absent or unreadable)
counts() {
    /usr/bin/python3 - "$1" <<'EOF' 2>/dev/null || true
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f + e, s)
EOF
}

# A hung test must not eat CI's 90 minutes: each pytest run has a wall-clock limit, tracebacks of all
# threads are dumped when one test runs over 5 minutes, and the slowest tests are listed.
USER_LIMIT="${PGBTEST_TIMEOUT:-3000}" ROOT_LIMIT="${PGBTEST_ROOT_TIMEOUT:-1200}"
PYTEST_OPTS=(-o faulthandler_timeout=300 --durations=10)

# The optional C scanner was built (scripts/install-deps.sh build_scanner): the non-root tests then run twice,
# on it and on the pure-Python scanner (PGBOUNCER_PY_PURE=1). PGBTEST_PURE_PASS=0 skips the second pass.
compiled_scanner() {
    [ "${PGBTEST_PURE_PASS:-1}" != 0 ] &&
        "$PY" -c 'import sys; from pgbouncer_py.proto import scan; sys.exit(0 if scan.COMPILED else 1)' 2>/dev/null
}

declare -a run_names=() run_rcs=() run_counts=() run_times=()
run_pytest() {  # name, then the command to run
    local name="$1" xml="$2" rc=0 t=$SECONDS
    shift 2
    _step "pytest ($name)"
    "$@" </dev/null || rc=$?
    if [ "$rc" -eq 124 ]; then
        echo "test.sh: pytest ($name) hit its time limit and was stopped"
    fi
    run_names+=("$name")
    run_rcs+=("$rc")
    run_counts+=("$(counts "$xml")")
    run_times+=("$((SECONDS - t))")
}

if [ "$(id -u)" -eq 0 ]; then
    # The unprivileged run gets a clean environment: only these variables pass from ours.
    declare -a PASS_ENV=(LANG="${LANG:-C.UTF-8}")
    for v in $(compgen -e); do
        case "$v" in CI|TERM|LC_*|PGBTEST_*|PGBOUNCER_C_BIN|PG_BINDIR|HYPOTHESIS_*) PASS_ENV+=("$v=${!v}") ;; esac
    done
    mkdir -p "$RUN_TMP/user" "$RUN_TMP/root"
    chown "$PGBTEST_USER:" "$RUN_TMP/user"
    run_pytest "as $PGBTEST_USER, -m 'not root'" "$RUN_TMP/user/junit.xml" \
        timeout --foreground -k 30 "$USER_LIMIT" runuser -u "$PGBTEST_USER" -- env -i "${PASS_ENV[@]}" \
            HOME="$PGBTEST_HOME" TMPDIR="$RUN_TMP/user" USER="$PGBTEST_USER" LOGNAME="$PGBTEST_USER" \
            PATH="$SAFE_PATH" PYTHONDONTWRITEBYTECODE=1 \
            "$PY" -m pytest "${PYTEST_OPTS[@]}" -m "not root" --junitxml="$RUN_TMP/user/junit.xml" "$@"
    if compiled_scanner; then
        # the same tests once more on the pure-Python scanner, the fallback where no compiler was at hand
        mkdir -p "$RUN_TMP/pure"
        chown "$PGBTEST_USER:" "$RUN_TMP/pure"
        run_pytest "as $PGBTEST_USER, -m 'not root', pure-Python scanner" "$RUN_TMP/pure/junit.xml" \
            timeout --foreground -k 30 "$USER_LIMIT" runuser -u "$PGBTEST_USER" -- env -i "${PASS_ENV[@]}" \
                HOME="$PGBTEST_HOME" TMPDIR="$RUN_TMP/pure" USER="$PGBTEST_USER" LOGNAME="$PGBTEST_USER" \
                PATH="$SAFE_PATH" PYTHONDONTWRITEBYTECODE=1 PGBOUNCER_PY_PURE=1 \
                "$PY" -m pytest "${PYTEST_OPTS[@]}" -m "not root" --junitxml="$RUN_TMP/pure/junit.xml" "$@"
    fi
    run_pytest "as root, -m root" "$RUN_TMP/root/junit.xml" \
        timeout --foreground -k 30 "$ROOT_LIMIT" env TMPDIR="$RUN_TMP/root" PATH="$SAFE_PATH" PYTHONDONTWRITEBYTECODE=1 \
            "$PY" -m pytest "${PYTEST_OPTS[@]}" -m root --junitxml="$RUN_TMP/root/junit.xml" "$@"
else
    mkdir -p "$RUN_TMP/user"
    echo "test.sh: not root: tests marked 'root' (packaging) are not run"
    run_pytest "as $(id -un), -m 'not root'" "$RUN_TMP/user/junit.xml" \
        timeout --foreground -k 30 "$USER_LIMIT" env TMPDIR="$RUN_TMP/user" PATH="$SAFE_PATH" PYTHONDONTWRITEBYTECODE=1 \
            "$PY" -m pytest "${PYTEST_OPTS[@]}" -m "not root" --junitxml="$RUN_TMP/user/junit.xml" "$@"
    if compiled_scanner; then
        mkdir -p "$RUN_TMP/pure"
        run_pytest "as $(id -un), -m 'not root', pure-Python scanner" "$RUN_TMP/pure/junit.xml" \
            timeout --foreground -k 30 "$USER_LIMIT" env TMPDIR="$RUN_TMP/pure" PATH="$SAFE_PATH" \
                PYTHONDONTWRITEBYTECODE=1 PGBOUNCER_PY_PURE=1 \
                "$PY" -m pytest "${PYTEST_OPTS[@]}" -m "not root" --junitxml="$RUN_TMP/pure/junit.xml" "$@"
    fi
fi

# Exit 5 (nothing collected) is fine for a run as long as some run collected tests.
failed_runs=0 collected_any=0 passed=0 failed=0 skipped=0
_step "summary"
printf 'install %s, ruff %s (%s)\n' "$(_elapsed "$t_install")" "$(_elapsed "$t_ruff")" \
    "$([ "$ruff_rc" -eq 0 ] && echo ok || echo "FAILED, exit $ruff_rc")"
for i in "${!run_names[@]}"; do
    rc="${run_rcs[$i]}"
    read -r p f s <<<"${run_counts[$i]:-}" || true
    verdict=ok
    if [ "$rc" -eq 5 ]; then
        verdict="no tests collected"
    elif [ "$rc" -ne 0 ] || [ -z "${p:-}" ]; then
        verdict="FAILED (pytest exit $rc)"
        failed_runs=$((failed_runs + 1))
    fi
    if [ "$rc" -ne 5 ]; then
        collected_any=1
    fi
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
    printf 'pytest %s: %s passed, %s failed, %s skipped in %s: %s\n' "${run_names[$i]}" \
        "${p:-?}" "${f:-?}" "${s:-?}" "$(_elapsed "${run_times[$i]}")" "$verdict"
done
if [ "$collected_any" -eq 0 ]; then
    echo "test.sh: no test was collected"
    failed_runs=$((failed_runs + 1))
fi
printf 'total %s\n' "$(_elapsed $((SECONDS - t0)))"
status=0
if [ "$failed_runs" -ne 0 ] || [ "$ruff_rc" -ne 0 ]; then
    status=1
fi
echo "summary: $passed passed, $failed failed, $skipped skipped"
exit "$status"
