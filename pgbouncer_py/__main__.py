"""Entry point for `python -m pgbouncer_py`."""

from pgbouncer_py.cli import main

raise SystemExit(main())
