"""Entry point for `python -m pgbouncer_py`."""

import os
import sys

from pgbouncer_py.cli import main

# messages name the program as it was started, not this file's path
raise SystemExit(main([f"{os.path.basename(sys.executable)} -m pgbouncer_py", *sys.argv[1:]]))
