"""The /metrics exposition (pgbouncer-py extension): the prometheus-community pgbouncer_exporter's metric names,
labels and units computed from the rows admin/show.py answers SHOW with, plus metrics.py's login and queue-wait
histograms and login failures. prometheus_client is imported only when /metrics is scraped."""

from pgbouncer_py import PGBOUNCER_VERSION, metrics
from pgbouncer_py.admin import show
from pgbouncer_py.metrics import Histogram
from pgbouncer_py.objects import CL_ACTIVE, registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# SHOW DATABASES: the exporter's label columns and gauges (reserve_pool_size is exported as reserve_pool)
DATABASE_LABELS = ("name", "host", "port", "database", "force_user", "pool_mode")
DATABASE_GAUGES = (("pool_size", "pool_size", "Server connections allowed per user/database pool"),
                   ("reserve_pool_size", "reserve_pool", "Extra server connections allowed when clients wait"),
                   ("max_connections", "max_connections", "Most server connections for the database (0: no limit)"),
                   ("current_connections", "current_connections", "Server connections the database has now"),
                   ("paused", "paused", "1 while the database is paused"),
                   ("disabled", "disabled", "1 while the database is disabled"))
# SHOW STATS_TOTALS: column, metric, scale to the metric's unit
STATS_COUNTERS = (
    ("query_count", "queries_pooled_total", 1, "SQL queries pooled"),
    ("query_time", "queries_duration_seconds_total", 1e-6, "Seconds spent running queries on servers"),
    ("bytes_received", "received_bytes_total", 1, "Bytes received from clients"),
    ("bytes_sent", "sent_bytes_total", 1, "Bytes sent to clients"),
    ("wait_time", "client_wait_seconds_total", 1e-6, "Seconds clients spent waiting for a server"),
    ("xact_count", "sql_transactions_pooled_total", 1, "SQL transactions pooled"),
    ("xact_time", "server_in_transaction_seconds_total", 1e-6, "Seconds servers spent in a transaction"),
    ("client_parse_count", "client_parses_total", 1, "Parse messages received from clients"),
    ("server_parse_count", "server_parses_total", 1, "Parse messages sent to servers"),
    ("bind_count", "binds_total", 1, "Bind messages received from clients"),
    ("server_assignment_count", "server_assignments_total", 1, "Times a server was assigned to a client"),
)
# SHOW POOLS: column, metric
POOL_GAUGES = (
    ("cl_active", "client_active_connections", "Clients linked to a server or idle"),
    ("cl_active_cancel_req", "client_active_cancel_connections", "Clients whose cancel request was forwarded"),
    ("cl_waiting", "client_waiting_connections", "Clients waiting for a server"),
    ("cl_waiting_cancel_req", "client_waiting_cancel_connections", "Cancel requests not yet forwarded"),
    ("sv_active", "server_active_connections", "Servers linked to a client"),
    ("sv_active_cancel", "server_active_cancel_connections", "Servers forwarding a cancel request"),
    ("sv_being_canceled", "server_being_canceled_connections", "Servers whose query is being canceled"),
    ("sv_idle", "server_idle_connections", "Idle servers ready for a client"),
    ("sv_used", "server_used_connections", "Servers idle for longer than server_check_delay"),
    ("sv_tested", "server_testing_connections", "Servers running server_reset_query or server_check_query"),
    ("sv_login", "server_login_connections", "Servers logging in"),
    ("maxwait", "client_maxwait_seconds", "Seconds the oldest waiting client has waited (whole seconds)"),
)
# SHOW LISTS: row name, metric
LIST_GAUGES = (("databases", "databases"), ("users", "users"), ("pools", "pools"), ("free_clients", "free_clients"),
               ("used_clients", "used_clients"), ("login_clients", "login_clients"),
               ("free_servers", "free_servers"), ("used_servers", "used_servers"),
               ("dns_names", "cached_dns_names"), ("dns_zones", "cached_dns_zones"),
               ("dns_queries", "in_flight_dns_queries"))


def _cols(result) -> dict[str, int]:
    return {name: i for i, (name, _oid) in enumerate(result.columns)}


def _label(v) -> str:
    return "" if v is None else str(v)


def client_groups() -> dict[tuple[str, str, str, str], int]:
    """SHOW CLIENTS rows counted by (database, user, application_name, state), as the exporter counts them; the
    names follow show.client_row without formatting the rest of the row."""
    out: dict = {}
    states = show._CL_STATE_NAMES
    for c in show.all_clients():
        pool = c.pool
        if pool is not None:
            user = pool.user.name if c.admin else (c.user.name if c.user is not None else c.username)
            dbname = pool.db.name
        else:
            user, dbname = c.username, c.dbname
        state = "idle" if c.state == CL_ACTIVE and c.link is None else states.get(c.state, c.state)
        key = (dbname or "", user or "", c.vars.get("application_name", ""), state)
        out[key] = out.get(key, 0) + 1
    return out


class Collector:
    """A prometheus_client collector over the registry: every scrape reads the objects as they are now."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        yield GaugeMetricFamily("pgbouncer_up", "1: the pooler answered this scrape itself", value=1)
        v = GaugeMetricFamily("pgbouncer_version_info", "The PgBouncer version reproduced", labels=["version"])
        v.add_metric([PGBOUNCER_VERSION], 1)
        yield v

        lists = {name: items for name, items in show.show_lists(None, None).rows}
        for row_name, metric in LIST_GAUGES:
            yield GaugeMetricFamily(f"pgbouncer_{metric}", f"SHOW LISTS {row_name}", value=lists.get(row_name, 0))

        cfg = registry.cfg
        yield GaugeMetricFamily("pgbouncer_config_max_client_connections", "max_client_conn",
                                value=cfg.max_client_conn)
        yield GaugeMetricFamily("pgbouncer_config_max_user_connections", "max_user_connections",
                                value=cfg.max_user_connections)

        cl = GaugeMetricFamily("pgbouncer_client_connections", "Client connections by database, user, "
                               "application_name and state", labels=["database", "user", "application_name", "state"])
        for key, n in sorted(client_groups().items()):
            cl.add_metric(list(key), n)
        yield cl

        res = show.show_databases(None, None)
        idx = _cols(res)
        fams = [(idx[col], GaugeMetricFamily(f"pgbouncer_databases_{metric}", text, labels=list(DATABASE_LABELS)))
                for col, metric, text in DATABASE_GAUGES]
        for row in res.rows:
            labels = [_label(row[idx[c]]) for c in DATABASE_LABELS]
            for i, fam in fams:
                fam.add_metric(labels, _num(row[i]))
        yield from (f for _, f in fams)

        res = show.show_stats_totals(None, None)
        idx = _cols(res)
        fams = [(idx[col], scale, CounterMetricFamily(f"pgbouncer_stats_totals_{metric}", text, labels=["database"]))
                for col, metric, scale, text in STATS_COUNTERS]
        logins = CounterMetricFamily("pgbouncer_py_client_logins_total", "Client logins (SHOW STATS "
                                     "total_client_login_count)", labels=["database"])
        for row in res.rows:
            for i, scale, fam in fams:
                fam.add_metric([row[0]], row[i] * scale)
            logins.add_metric([row[0]], row[idx["client_login_count"]])
        yield from (f for _, _, f in fams)
        yield logins

        res = show.show_pools(None, None)
        idx = _cols(res)
        fams = [(idx[col], GaugeMetricFamily(f"pgbouncer_pools_{metric}", text, labels=["database", "user"]))
                for col, metric, text in POOL_GAUGES]
        for row in res.rows:
            for i, fam in fams:
                fam.add_metric([row[0], row[1]], row[i])
        yield from (f for _, f in fams)

        rec = metrics.recorder
        if rec is None:
            return
        failures = CounterMetricFamily("pgbouncer_py_client_login_failures_total", "Clients that sent a startup "
                                       "packet and were closed before their login completed", labels=["database"])
        for name, n in sorted(rec.login_failures.items()):
            failures.add_metric([name], n)
        yield failures
        yield _histogram(HistogramMetricFamily, "pgbouncer_py_client_login_duration_seconds",
                         "Seconds from a client's TCP connect to its first ReadyForQuery", rec.login, False)
        yield _histogram(HistogramMetricFamily, "pgbouncer_py_client_wait_duration_seconds",
                         "Seconds clients waited in the queue for a server, per server assignment (0 when one "
                         "was free at once)", rec.wait, True)


def _num(v):
    return float("nan") if v is None else v


def _histogram(family, name: str, text: str, per_db, with_zeros: bool):
    """One labelled histogram; queue waits add the assignments that did not wait as observations of 0."""
    h = family(name, text, labels=["database"])
    for db in show.databases():
        if db.admin:
            continue
        hist = per_db.get(db)
        zeros = 0
        if with_zeros:
            waited = hist.count if hist is not None else 0
            zeros = max(0, db.stats.server_assignment_count - waited)
        if hist is None and not zeros:
            continue
        hist = hist or Histogram()
        h.add_metric([db.name], hist.cumulative(zeros), sum_value=hist.sum)
    return h


_registry = None


def exposition() -> tuple[int, str, bytes]:
    """The /metrics answer: (HTTP status, content type, body)."""
    global _registry
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    except ImportError:
        return 503, "text/plain; charset=utf-8", b"prometheus_client is not installed (python3-prometheus-client)\n"
    if _registry is None:
        _registry = CollectorRegistry(auto_describe=False)
        _registry.register(Collector())
        ProcessCollector(namespace="pgbouncer", registry=_registry)
    return 200, CONTENT_TYPE, generate_latest(_registry)
