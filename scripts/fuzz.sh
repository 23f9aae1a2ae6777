#!/usr/bin/env bash
# Run every fuzz target with a time budget: the hypothesis property tests (tests/fuzz) with many examples,
# then atheris (coverage-guided, libFuzzer) on each target in tests/fuzz/targets.py when atheris imports.
#   scripts/fuzz.sh            short run (about 2 minutes)
#   scripts/fuzz.sh 3600       one hour, split over the targets
#   FUZZ_TARGETS="scram_server hba" scripts/fuzz.sh 600
# Crashes land in $FUZZ_OUT (default /tmp/pgb-fuzz): turn each into a test in tests/regress/.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
BUDGET="${1:-120}"
PY="${FUZZ_PYTHON:-$REPO_ROOT/.venv/bin/python}"
OUT="${FUZZ_OUT:-/tmp/pgb-fuzz}"
mkdir -p "$OUT"
export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

have_atheris=0
if "$PY" -c "import atheris" 2>/dev/null; then
    have_atheris=1
else
    echo "fuzz.sh: atheris is not importable by $PY (pip install atheris); running hypothesis only"
fi

# a third of the budget for hypothesis (or all of it without atheris): examples scale with the budget
hyp_share=$(( have_atheris ? BUDGET / 3 : BUDGET ))
examples=$(( hyp_share * 4 ))   # about 4 examples per test per second of budget on this machine
[ "$examples" -lt 60 ] && examples=60
echo "=== hypothesis: PGB_FUZZ_EXAMPLES=$examples"
rc=0
PGB_FUZZ_EXAMPLES="$examples" "$PY" -m pytest -p no:cacheprovider -q tests/fuzz || rc=$?

if [ "$have_atheris" -eq 1 ]; then
    read -r -a targets <<<"${FUZZ_TARGETS:-$("$PY" -c 'import sys; sys.path.insert(0, "tests/fuzz"); import targets; print(" ".join(sorted(targets.TARGETS)))')}"
    per=$(( (BUDGET - hyp_share) / ${#targets[@]} ))
    [ "$per" -lt 5 ] && per=5
    for t in "${targets[@]}"; do
        mkdir -p "$OUT/corpus/$t"
        echo "=== atheris $t: ${per}s"
        if ! "$PY" tests/fuzz/atheris_fuzz.py "$t" -max_total_time="$per" -rss_limit_mb=1024 -timeout=10 \
                -artifact_prefix="$OUT/$t-" -print_final_stats=1 "$OUT/corpus/$t" >"$OUT/$t.log" 2>&1; then
            echo "fuzz.sh: atheris found a problem in $t: see $OUT/$t.log and $OUT/$t-*"
            tail -30 "$OUT/$t.log"
            rc=1
        else
            grep -E "^stat::number_of_executed_units|^Done" "$OUT/$t.log" | tr '\n' ' '; echo
        fi
    done
fi
exit "$rc"
