"""Coverage-guided fuzzing (atheris/libFuzzer) of one target from targets.py:
python tests/fuzz/atheris_fuzz.py <target> [libFuzzer options, e.g. -max_total_time=60 corpus_dir]."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["pgbouncer_py"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} <target> [libFuzzer options]; targets: {', '.join(sorted(targets.TARGETS))}")
    name = sys.argv.pop(1)

    def one_input(data: bytes) -> None:
        targets.run_one(name, data)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
