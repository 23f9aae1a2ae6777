"""pgbouncer-py: a PostgreSQL connection pooler, drop-in compatible with PgBouncer 1.25."""

__version__ = "0.1.0"
PGBOUNCER_VERSION = "1.25.2"
# what --version prints first and SHOW VERSION returns
VERSION_STRING = f"PgBouncer {PGBOUNCER_VERSION} (pgbouncer-py {__version__})"
