"""What each admin console command does and what each SHOW column means, with its unit.

man/gen_man.py turns this into the ADMIN CONSOLE section of pgbouncer(1) and into docs/console.md; the column
names and their order come from pgbouncer_py/admin/show.py (SHOW_COLUMNS below says which list each SHOW command
answers with). tests/packaging/test_docs.py fails when a SHOW command, a column or a console command has no entry
here. Write `name` in backquotes for a command, column, setting or value.
"""

from pgbouncer_py import takeover
from pgbouncer_py.admin import fds, show

# SHOW command -> its columns (name, type oid), in the order the console sends them
SHOW_COLUMNS = {
    "stats": show.STATS_COLS,
    "stats_totals": show.STATS_TOTALS_COLS,
    "stats_averages": show.STATS_AVERAGES_COLS,
    "totals": show.TOTALS_COLS,
    "servers": show.SOCKET_COLS,
    "clients": show.SOCKET_COLS,
    "sockets": show.SOCKET_COLS + show.SOCKETS_EXTRA_COLS,
    "active_sockets": show.SOCKET_COLS + show.SOCKETS_EXTRA_COLS,
    "pools": show.POOLS_COLS,
    "peer_pools": show.PEER_POOLS_COLS,
    "lists": show.LISTS_COLS,
    "users": show.USERS_COLS,
    "databases": show.DATABASES_COLS,
    "peers": show.PEERS_COLS,
    "config": show.CONFIG_COLS,
    "mem": show.MEM_COLS,
    "dns_hosts": show.DNS_HOSTS_COLS,
    "dns_zones": show.DNS_ZONES_COLS,
    "version": show.VERSION_COLS,
    "state": show.STATE_COLS,
    "fds": list(zip(takeover.FDS_COLUMNS, fds._FDS_TYPES, strict=True)),
    "takeover_state": [("fd", show.INT4), ("state", show.TEXT)],
}

_COUNTER_TOTALS = {
    "server_assignment_count": "Times a server connection was handed to a client of this database (in transaction "
                               "pooling, about once per transaction).",
    "xact_count": "Transactions completed through the pooler (outside an explicit transaction, each statement "
                  "counts as one).",
    "query_count": "Queries completed through the pooler.",
    "received": "Bytes received from clients.",
    "sent": "Bytes sent to clients.",
    "xact_time": "Microseconds spent by server connections in transactions (from the first query to the end of "
                 "the transaction), idle-in-transaction time included.",
    "query_time": "Microseconds spent by server connections running queries.",
    "wait_time": "Microseconds clients spent waiting for a server connection.",
    "client_parse_count": "Prepared statements created by clients (Parse messages with a name, and SQL `PREPARE` in "
                          "pgbouncer-py), when `max_prepared_statements` is on.",
    "server_parse_count": "Statements the pooler prepared on server connections (a small number next to "
                          "`client_parse_count` means the statements were reused across clients).",
    "bind_count": "Executions of prepared statements (Bind messages, and SQL `EXECUTE` in pgbouncer-py).",
    "client_login_count": "Client logins (successful or not) to this database.",
}

_COUNTER_AVERAGES = {
    "server_assignment_count": "Server assignments per second over the last `stats_period`.",
    "xact_count": "Transactions per second over the last `stats_period`.",
    "query_count": "Queries per second over the last `stats_period`.",
    "recv": "Bytes per second received from clients over the last `stats_period`.",
    "sent": "Bytes per second sent to clients over the last `stats_period`.",
    "xact_time": "Average transaction duration over the last `stats_period`, in microseconds.",
    "query_time": "Average query duration over the last `stats_period`, in microseconds.",
    "wait_time": "Average time a client waited for a server connection over the last `stats_period`, in "
                 "microseconds (per server assignment).",
    "client_parse_count": "Client prepared-statement creations per second over the last `stats_period`.",
    "server_parse_count": "Statements prepared on servers per second over the last `stats_period`.",
    "bind_count": "Prepared-statement executions per second over the last `stats_period`.",
    "client_login_count": "Client logins per second over the last `stats_period`.",
}

_STATS = {"database": "Database name (`[databases]` entry; `pgbouncer` is the console itself)."}
_STATS.update({f"total_{k}": v for k, v in _COUNTER_TOTALS.items()})
_STATS.update({f"avg_{k}": v for k, v in _COUNTER_AVERAGES.items()})

_STATS_TOTALS = {"database": _STATS["database"], "bytes_received": _COUNTER_TOTALS["received"],
                 "bytes_sent": _COUNTER_TOTALS["sent"]}
_STATS_TOTALS.update({k: v for k, v in _COUNTER_TOTALS.items() if k not in ("received", "sent")})

_STATS_AVERAGES = {"database": _STATS["database"], "bytes_received": _COUNTER_AVERAGES["recv"],
                   "bytes_sent": _COUNTER_AVERAGES["sent"]}
_STATS_AVERAGES.update({k: v for k, v in _COUNTER_AVERAGES.items()
                        if k not in ("recv", "sent", "client_parse_count", "server_parse_count", "bind_count",
                                     "client_login_count")})
_STATS_AVERAGES.update({f"avg_{k}": _COUNTER_AVERAGES[k] for k in ("client_parse_count", "server_parse_count",
                                                                   "bind_count", "client_login_count")})

_SOCKET_COMMON = {
    "type": "`C` for a client, `S` for a server connection.",
    "user": "The user of the connection's pool (for a client logged in under a forced user, the forced user).",
    "database": "The database (`[databases]` entry) of the connection's pool.",
    "replication": "`none`, or `logical` / `physical` for a replication connection.",
    "addr": "Remote IP address, or `unix` for the unix socket.",
    "port": "Remote port.",
    "local_addr": "The pooler's own address on this connection (`unix` for the unix socket).",
    "local_port": "The pooler's own port on this connection.",
    "connect_time": "When the connection was made (local time, `YYYY-MM-DD HH:MM:SS TZ`).",
    "request_time": "When the connection last had a request (local time).",
    "wait": "Whole seconds of the client's current wait for a server (0 when not waiting).",
    "wait_us": "Microseconds part of that wait.",
    "close_needed": "1 when the connection will be closed as soon as it is released (after `RECONNECT`, a changed "
                    "database entry or server TLS settings), else 0.",
    "ptr": "The connection's internal address (an opaque hexadecimal handle; log lines use the same value after "
           "`C-` or `S-`).",
    "link": "`ptr` of the connection it is linked with (the client's server, the server's client), empty when none.",
    "remote_pid": "For a server, the PostgreSQL backend's process id; for a client on the unix socket, its process "
                  "id when the kernel tells it; else 0.",
    "tls": "TLS version and cipher (`TLSv1.3/TLS_AES_256_GCM_SHA384`), empty without TLS.",
    "application_name": "The `application_name` of the client, or the one the server reported for a server "
                        "connection.",
    "prepared_statements": "Prepared statements the client has created, or the pooler has prepared on this server "
                           "connection.",
    "id": "A number unique among the process's connections; `KILL_CLIENT` takes a client's id.",
}
_CLIENT_STATE = ("`active` (linked to a server, or free to send a query), `idle` (logged in, no server), `waiting` "
                 "(has a query and waits for a server), `active_cancel_req` / `waiting_cancel_req` (a cancel request "
                 "being forwarded / waiting to be)")
_SERVER_STATE = ("`active` (linked to a client), `idle` (in the pool, ready), `used` (released, to be checked or "
                 "reset before reuse), `tested` (running `server_reset_query` or `server_check_query`), `new` "
                 "(logging in), `active_cancel` (carrying a cancel request), `being_canceled` (a cancel request for it "
                 "is on its way)")
_CLIENTS = {**_SOCKET_COMMON, "state": "Client state: " + _CLIENT_STATE + "."}
_SERVERS = {**_SOCKET_COMMON, "state": "Server connection state: " + _SERVER_STATE + "."}
_SOCKETS = {**_SOCKET_COMMON,
            "state": "Internal list of the connection: `cl_active`, `cl_waiting`, `cl_login`, `cl_active_cancel_req`, "
                     "`cl_waiting_cancel_req`, `sv_active`, `sv_idle`, `sv_used`, `sv_tested`, `sv_login`, "
                     "`sv_active_cancel`, `sv_being_canceled`.",
            "recv_pos": "Bytes received and held for this connection (pgbouncer-py keeps no fixed packet buffer; "
                        "this is what waits to be forwarded).",
            "pkt_pos": "Always 0 in pgbouncer-py (PgBouncer's position inside its packet buffer).",
            "pkt_remain": "Always 0 in pgbouncer-py (PgBouncer's bytes left of the current packet).",
            "send_pos": "Always 0 in pgbouncer-py (PgBouncer's send position in its buffer).",
            "send_remain": "Bytes queued in the kernel-side write buffer of the connection, not yet sent.",
            "pkt_avail": "Same as `recv_pos`.",
            "send_avail": "Same as `send_remain`."}

_POOLS = {
    "database": "Database of the pool.",
    "user": "User of the pool (one pool per database and user pair).",
    "cl_active": "Clients linked to a server connection, or logged in and not waiting for one.",
    "cl_waiting": "Clients that have sent a query and wait for a server connection. A number that stays above 0 "
                  "means the pool is too small or the server too slow.",
    "cl_active_cancel_req": "Clients whose cancel request has been sent on to the server, waiting for it to finish.",
    "cl_waiting_cancel_req": "Clients whose cancel request waits for a connection to the server.",
    "sv_active": "Server connections linked to a client.",
    "sv_active_cancel": "Server connections carrying a cancel request to PostgreSQL.",
    "sv_being_canceled": "Server connections whose query is being cancelled; they go back to the pool once the "
                         "cancel has been delivered.",
    "sv_idle": "Server connections in the pool, ready for a client.",
    "sv_used": "Server connections released and waiting for a check (`server_check_query`) or reset before reuse.",
    "sv_tested": "Server connections running `server_reset_query` or `server_check_query`.",
    "sv_login": "Server connections being opened and logged in.",
    "maxwait": "How long the oldest waiting client has waited, whole seconds. Growing values mean clients queue.",
    "maxwait_us": "Microseconds part of `maxwait`.",
    "pool_mode": "The pool mode in effect for the pool (user over database over global setting).",
    "load_balance_hosts": "For a database with several hosts: `round-robin` or `disable`; empty otherwise.",
}

_PEER_POOLS = {
    "peer_id": "The peer's id (`[peers]` section).",
    "cl_active_cancel_req": "Cancel requests forwarded to the peer and not finished.",
    "cl_waiting_cancel_req": "Cancel requests waiting for a connection to the peer.",
    "sv_active_cancel": "Connections to the peer carrying a cancel request.",
    "sv_login": "Connections to the peer being opened.",
}

_LISTS = {
    "list": "The name of the count: `databases`, `users`, `peers`, `pools`, `peer_pools`, `free_clients`, "
            "`used_clients`, `login_clients`, `free_servers`, `used_servers`, `dns_names`, `dns_zones`, "
            "`dns_queries`, `dns_pending`.",
    "items": "The count. `used_clients` counts every client, `login_clients` those still logging in, "
             "`used_servers` every server connection. The `free_*` and `dns_*` rows are about PgBouncer's memory "
             "caches and c-ares resolver and are 0 in pgbouncer-py.",
}

_USERS = {
    "name": "User name (from `auth_file`, `[users]`, `auth_query` or a forced user).",
    "pool_size": "`pool_size` from the user's `[users]` line, right-aligned in 9 characters; empty when not set.",
    "reserve_pool_size": "`reserve_pool_size` from the user's `[users]` line, formatted the same way.",
    "pool_mode": "`pool_mode` from the user's `[users]` line; empty when not set.",
    "max_user_connections": "The user's limit of server connections (0: none).",
    "current_connections": "The user's server connections now, all pools together.",
    "max_user_client_connections": "The user's limit of client connections (0: none).",
    "current_client_connections": "The user's client connections now.",
}

_DATABASES = {
    "name": "Name clients connect to (`[databases]` entry; `pgbouncer` is the console).",
    "host": "Server host, host list or socket directory; empty for the default unix socket.",
    "port": "Server port.",
    "database": "Database name on the server (`dbname`).",
    "force_user": "The forced `user=` of the entry, empty when clients log in as themselves.",
    "pool_size": "Pool size in effect for the database's pools.",
    "min_pool_size": "`min_pool_size` in effect.",
    "reserve_pool_size": "`reserve_pool_size` in effect.",
    "server_lifetime": "`server_lifetime` in effect, seconds.",
    "pool_mode": "The entry's own `pool_mode`; empty when it uses the global one.",
    "load_balance_hosts": "For a host list: `round-robin` or `disable`; empty otherwise.",
    "max_connections": "`max_db_connections` in effect (0: no limit).",
    "current_connections": "Server connections of the database now.",
    "max_client_connections": "`max_db_client_connections` in effect (0: no limit).",
    "current_client_connections": "Client connections of the database now.",
    "paused": "1 while the database is paused (`PAUSE`, `KILL`).",
    "disabled": "1 while the database is disabled (`DISABLE`).",
}

_PEERS = {
    "peer_id": "The peer's id.",
    "host": "The peer's host (or unix socket directory).",
    "port": "The peer's port.",
    "pool_size": "Most connections used at once to forward cancel requests to the peer.",
}

_CONFIG = {
    "key": "Setting name (`[pgbouncer]` section).",
    "value": "Value in effect.",
    "default": "Default value.",
    "changeable": "`yes` when `SET` and reload can change it, `no` when only a restart does.",
}

_MEM = {
    "name": "Kind of object: `user_cache`, `db_cache`, `pool_cache`, `server_cache`, `client_cache`.",
    "size": "Bytes one object takes (pgbouncer-py: an estimate from Python's object sizes).",
    "used": "Objects of this kind in use.",
    "free": "Objects kept for reuse (always 0 in pgbouncer-py, which keeps no free lists).",
    "memtotal": "`size` times the number of objects, bytes.",
}

_DNS_HOSTS = {
    "hostname": "Host name in the DNS cache.",
    "ttl": "Seconds until the cached answer expires.",
    "addrs": "Addresses of the answer, comma-separated.",
}

_DNS_ZONES = {
    "zonename": "DNS zone watched by `dns_zone_check_period`.",
    "serial": "The zone's SOA serial last seen.",
    "count": "Host names cached in that zone.",
}

_FDS = {
    "fd": "File descriptor number, passed with the row.",
    "task": "`pooler` (a listening socket), `client` or `server`.",
    "user": "User of the connection's pool.",
    "database": "Database of the connection's pool.",
    "addr": "Remote address (`unix` for the unix socket).",
    "port": "Remote port.",
    "cancel": "The cancel key handed to the client (or got from the server).",
    "link": "fd of the linked connection, or 0.",
    "client_encoding": "The connection's `client_encoding`.",
    "std_strings": "The connection's `standard_conforming_strings`.",
    "datestyle": "The connection's `DateStyle`.",
    "timezone": "The connection's `TimeZone`.",
    "password": "For a user learned through `auth_query`, its password hash (the new process cannot look it up "
                "for a connection already logged in); else NULL.",
    "scram_client_key": "SCRAM ClientKey learned from the client's login, used to log in to servers "
                        "without a clear-text password; else NULL.",
    "scram_server_key": "SCRAM ServerKey that goes with it; else NULL.",
}

# (summary, columns) per SHOW command; None columns mean the rows are documented in the summary
SHOW = {
    "stats": ("Traffic counters per database since the start (`total_*`) and their averages over the last "
              "`stats_period` (`avg_*`).", _STATS),
    "stats_totals": ("The `total_*` half of `SHOW STATS`, with shorter column names.", _STATS_TOTALS),
    "stats_averages": ("The `avg_*` half of `SHOW STATS`, with shorter column names.", _STATS_AVERAGES),
    "totals": ("The same counters as `SHOW STATS`, added up over every database: one row per counter, "
               "`total_<name>` then `avg_<name>`, with the names `server_assignment_count`, `xact_count`, "
               "`query_count`, `client_bytes`, `server_bytes`, `xact_time`, `query_time`, `wait_time`, "
               "`ps_client_parse_count`, `ps_server_parse_count`, `ps_bind_count`, `client_login_count`.",
               {"name": "Counter name.", "value": "Its value (unit as for the same counter in `SHOW STATS`)."}),
    "servers": ("One row per server connection.", _SERVERS),
    "clients": ("One row per client connection, the console's own included.", _CLIENTS),
    "sockets": ("Every client and server connection with buffer details (for debugging).", _SOCKETS),
    "active_sockets": ("Like `SHOW SOCKETS`, only the connections that have data waiting in a buffer.", _SOCKETS),
    "pools": ("One row per pool (database and user pair): its clients and server connections by state. The "
              "first place to look when clients wait.", _POOLS),
    "peer_pools": ("One row per peer that cancel requests are forwarded to. pgbouncer-py forwards each request on a "
                   "short connection of its own, so this list is always empty.", _PEER_POOLS),
    "lists": ("Counts of the process's objects, one row each.", _LISTS),
    "users": ("One row per known user, with its limits.", _USERS),
    "databases": ("One row per database entry (and the console), with the settings in effect and current counts.",
                  _DATABASES),
    "peers": ("One row per `[peers]` entry.", _PEERS),
    "config": ("Every `[pgbouncer]` setting with its current value, default and whether it can change at run time "
               "(pgbouncer(5)).", _CONFIG),
    "mem": ("Memory used per kind of object.", _MEM),
    "dns_hosts": ("The DNS cache. pgbouncer-py resolves through the event loop and does not list its cache: always "
                  "empty.", _DNS_HOSTS),
    "dns_zones": ("DNS zones watched for serial changes (c-ares builds of PgBouncer only): always empty.",
                  _DNS_ZONES),
    "version": ("The version string: `PgBouncer 1.25.2 (pgbouncer-py X.Y.Z)`, the PgBouncer release whose "
                "behaviour is reproduced, then pgbouncer-py's own version.", {"version": "The version string."}),
    "state": ("Whether the process is running normally, paused or suspended: rows `active`, `paused`, "
              "`suspended`.", {"key": "`active`, `paused` or `suspended`.", "value": "`yes` or `no`."}),
    "fds": ("Admin only; used by online restart. Every listening, client and server socket, each passed as a file "
            "descriptor to a console client connected over the unix socket by the same operating system user.",
            _FDS),
    "takeover_state": ("Admin only; pgbouncer-py's addition to online restart between two pgbouncer-py processes: "
                       "the session state of each passed connection (transaction state, tracked parameters, "
                       "prepared statements) that PgBouncer's `SHOW FDS` columns cannot carry.",
                       {"fd": "The file descriptor the row belongs to.",
                        "state": "The connection's state, encoded for the new process."}),
}

# Other console commands: (syntax, summary); admin_users only.
COMMANDS = [
    ("PAUSE [db]", "Waits until every server connection (of one database, or of all) is released, then closes "
                   "them. Clients keep their connections; their next query waits until `RESUME`. Used before a "
                   "PostgreSQL restart or switchover. Answers when the pause is complete."),
    ("PAUSE [db] TIMEOUT n [FORCE]", "pgbouncer-py extension (docs/extensions.md): a `PAUSE` that waits at most "
                                     "`n` seconds. Without `FORCE`, when servers are still in use after `n` "
                                     "seconds the pause is undone and the command fails (SQLSTATE 57014); with "
                                     "`FORCE`, the queries still running are canceled and their server "
                                     "connections closed, and the pause completes. A `RESUME` while any `PAUSE` "
                                     "waits makes that `PAUSE` fail at once instead of hanging."),
    ("RESUME [db]", "Ends a `PAUSE`, `SUSPEND` or `KILL`."),
    ("SUSPEND", "Flushes every buffer and stops reading from any socket (online restart's first step). If the "
                "console that issued it disconnects, the process resumes."),
    ("DISABLE db", "New clients of the database are refused (`database \"db\" is disabled`); connected ones go on."),
    ("ENABLE db", "Undoes `DISABLE`."),
    ("RECONNECT [db]", "Marks the server connections (of one database, or of all) to be closed when released, so "
                       "that new ones are made: after a change on the server side, such as a failover behind a "
                       "DNS name."),
    ("KILL [db]", "Closes every client and server connection of the database (or of all) at once; the database "
                  "then stays paused until `RESUME`."),
    ("KILL_CLIENT id", "Closes one client connection, named by the `id` column of `SHOW CLIENTS`; it gets "
                       "`admin forced disconnect`."),
    ("WAIT_CLOSE [db]", "Waits until the server connections marked by `RECONNECT` or a reload are closed."),
    ("RELOAD", "Reads the configuration file, the auth file and the HBA files again, as `SIGHUP` does. A file "
               "that does not load leaves the old configuration in force and the command fails."),
    ("SET key = value", "Changes a `[pgbouncer]` setting until the next reload (which resets it to the file's "
                        "value). Only settings that can change at run time (`changeable` in `SHOW CONFIG`)."),
    ("SHUTDOWN", "Exits at once, closing every connection."),
    ("SHUTDOWN WAIT_FOR_SERVERS", "Stops accepting clients, waits until every server connection is released, "
                                  "then exits (as `SIGINT`)."),
    ("SHUTDOWN WAIT_FOR_CLIENTS", "Stops accepting clients and exits once every client has disconnected (as "
                                  "`SIGTERM`): with `so_reuseport`, a new process takes the new clients meanwhile."),
]

# The command-table key of a COMMANDS entry whose key is not its first word
COMMAND_KEYS = {"PAUSE [db] TIMEOUT n [FORCE]": "pause_timeout"}

# The command words of COMMANDS, as the console's command table knows them
COMMAND_WORDS = {"pause", "pause_timeout", "resume", "suspend", "disable", "enable", "reconnect", "kill", "kill_client",
                 "wait_close", "reload", "set", "shutdown"}
