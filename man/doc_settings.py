"""What each [pgbouncer] setting does, in more words than the one-line `doc` of the settings table.

man/gen_man.py puts the table's `doc` (first sentence) and this text together into pgbouncer(5) and docs/config.md;
type, default and reload behaviour come from pgbouncer_py/config/params.py. tests/packaging/test_docs.py fails
when a setting of the table has no entry here. Write `name` in backquotes for a setting, value or file name.
"""

DETAILS: dict[str, str] = {
    "admin_users": (
        "Comma-separated list of users who may run every console command, including `RELOAD`, `PAUSE`, `SET` and "
        "`SHUTDOWN`. They authenticate like any other user, with `auth_type`. The user `pgbouncer` connecting "
        "over the unix socket from the operating system user that runs the pooler is always let in as an admin "
        "without a password, whatever this list says."),
    "application_name_add_host": (
        "When set, a client's `application_name` gets ` - ` and its address and port appended at login (for "
        "example `psql - 10.0.0.7:51234`), so that `pg_stat_activity` on the server shows where a session came "
        "from. A later `SET application_name` by the client is passed on unchanged."),
    "auth_dbname": (
        "The `[databases]` entry whose server connections run `auth_query` when the database a client asked for "
        "does not name one itself (an `auth_dbname` key on a database line wins). It must be a configured "
        "database and cannot be `pgbouncer`."),
    "auth_file": (
        "One line per user: the name and the password in double quotes. The password may be in clear text, an md5 "
        "hash (`md5` followed by the hex digest of password and user name) or a SCRAM secret as PostgreSQL stores "
        "it (`SCRAM-SHA-256$...`), so the file can be filled from `pg_authid`. The file is read again on every "
        "reload when it has changed."),
    "auth_hba_file": (
        "Used when `auth_type` is `hba`: a file in PostgreSQL's `pg_hba.conf` syntax that picks the "
        "authentication method for each connection from its type (`local`, `host`, `hostssl`, `hostnossl`), "
        "database, user and address. The methods are `trust`, `reject`, `password`, `md5`, `scram-sha-256`, "
        "`cert` and `peer` (see pgbouncer(5), HBA FILE). Read again on reload."),
    "auth_ident_file": (
        "User name maps for the `map=` option of the `cert` and `peer` methods in `auth_hba_file`: lines of map "
        "name, operating system (or certificate) name and database user name, as PostgreSQL's `pg_ident.conf`."),
    "auth_ldap_options": (
        "Default options for the `ldap` method (server, base DN, search or bind form, TLS), written as the "
        "options of an `ldap` line in PostgreSQL's `pg_hba.conf`. PgBouncer 1.25 added LDAP; see "
        "docs/migrating.md for its state in pgbouncer-py."),
    "auth_query": (
        "For a user that is not in `auth_file`, the pooler logs in to the server as `auth_user` and runs this "
        "query with the user name as `$1`; it must return the name and the password hash (md5 or SCRAM), or a "
        "NULL password for a user that may not log in with a password. The default reads `pg_authid`, which needs "
        "a superuser; a `SECURITY DEFINER` function is the usual alternative. A database line may set its own "
        "`auth_query`."),
    "auth_type": (
        "How clients authenticate. `md5` checks a password with MD5, or with SCRAM when the stored secret is a "
        "SCRAM one; `scram-sha-256` accepts SCRAM only; `plain` asks for the password in clear text; `trust` lets "
        "every user listed in `auth_file` in without a password; `any` lets anyone in under any name (only with a "
        "forced `user=` on every database); `cert` takes the user name from the client certificate's CN (needs "
        "TLS); `hba` decides per connection from `auth_hba_file`; `pam` asks the PAM service `pgbouncer` (Python "
        "module `pam`, Debian package python3-pampy)."),
    "auth_user": (
        "The user that logs in to the server to run `auth_query`. Its own password must be in `auth_file` (or be "
        "set on the database line). A database line may name another `auth_user`."),
    "autodb_idle_timeout": (
        "Databases created on the fly from the `*` fallback entry of `[databases]` are dropped once they have had "
        "no pool in use for this long (seconds)."),
    "cancel_wait_timeout": (
        "A cancel request (a client's ^C) is sent to the server on a connection of its own. If no connection for "
        "it can be made within this many seconds, the request is dropped so that it never stays queued forever (0 "
        "waits without limit)."),
    "client_idle_timeout": (
        "A client connection that has sent nothing for this many seconds is closed with `client_idle_timeout`. "
        "Meant as a safety net for clients that vanish without closing; it should be longer than any client-side "
        "pool's idle timeout. Can be set per user in `[users]`. 0 turns it off."),
    "client_login_timeout": (
        "A client that has not finished the TLS handshake and the login within this many seconds is disconnected "
        "(`client_login_timeout`). 0 turns it off."),
    "client_tls13_ciphers": (
        "The TLS 1.3 cipher suites offered to clients, in OpenSSL's colon-separated syntax. Empty keeps OpenSSL's "
        "default suites."),
    "client_tls_ca_file": (
        "PEM file of the certificate authorities that client certificates must chain to. Without it the system's "
        "trust store is used when a certificate is checked."),
    "client_tls_cert_file": (
        "PEM certificate the pooler shows to clients that ask for TLS. Needed, with `client_tls_key_file`, for "
        "any `client_tls_sslmode` other than `disable`."),
    "client_tls_ciphers": (
        "OpenSSL cipher list for TLS 1.2 and older towards clients. `default` means OpenSSL's default list; the "
        "aliases `secure`, `fast`, `normal` and `compat`, known from PgBouncer, are accepted."),
    "client_tls_dheparams": (
        "Diffie-Hellman parameters for the DHE key exchange with clients: `none` (no DHE), `auto` (the built-in "
        "2048-bit group) or `legacy` (the 1024-bit group older clients may need)."),
    "client_tls_ecdhcurve": (
        "Elliptic curve(s) for ECDHE with clients, in OpenSSL's naming (`prime256v1`, `X25519`, a colon-separated "
        "list), or `auto` to let OpenSSL choose. `none` is refused: OpenSSL always needs a key exchange group."),
    "client_tls_key_file": "PEM private key of `client_tls_cert_file`; it must not be readable by other users.",
    "client_tls_protocols": (
        "TLS versions accepted from clients: a list of `tlsv1.0`, `tlsv1.1`, `tlsv1.2`, `tlsv1.3`, or `all`, or "
        "`secure` (TLS 1.2 and 1.3). The old versions also need a cipher list that allows them on Debian 12's "
        "OpenSSL."),
    "client_tls_sslmode": (
        "TLS for client connections. `disable`: TLS requests are refused. `allow` and `prefer`: TLS is used when "
        "the client asks for it. `require`: clients must use TLS (unix socket clients excepted). `verify-ca` and "
        "`verify-full`: clients must also present a certificate that chains to `client_tls_ca_file`. A "
        "certificate a client sends in the weaker modes is checked too, which is what `auth_type = cert` relies "
        "on."),
    "conffile": (
        "Shows the configuration file the process was started with. Setting it (with `SET` on the console) makes "
        "the next reload read another file."),
    "default_pool_size": (
        "The number of server connections each pool may have, a pool being one database and user pair. "
        "`pool_size` on a database line or in `[users]` overrides it. Together with `max_db_connections` and "
        "`max_user_connections` it decides how many backends PostgreSQL sees."),
    "disable_pqexec": (
        "When set, a client's simple-protocol Query message is refused with `PQexec disallowed` and the "
        "connection closed; only the extended protocol (Parse/Bind/Execute) is allowed. A defence against SQL "
        "injection that stacks several statements in one string. Applies to clients that connect after the start."),
    "dns_max_ttl": (
        "How long (seconds) a resolved host name of a `[databases]` entry is reused before it is looked up again."),
    "dns_nxdomain_ttl": (
        "How long (seconds) a failed lookup (no such name) is remembered, so that a missing name does not cause a "
        "query to the resolver for every connection attempt."),
    "dns_zone_check_period": (
        "PgBouncer built with c-ares polls the SOA serial of DNS zones to notice changes early. pgbouncer-py "
        "resolves through the event loop (or aiodns) and relies on `dns_max_ttl` instead: the setting is accepted "
        "and has no effect."),
    "idle_transaction_timeout": (
        "A client that sits inside an open transaction without sending anything for this many seconds is "
        "disconnected (`idle transaction timeout`) and its server connection closed, so that an abandoned "
        "transaction does not hold locks and a server. Can be set per user. 0 turns it off."),
    "ignore_startup_parameters": (
        "Comma-separated startup parameters that a client may send and that the pooler then drops instead of "
        "refusing the login with `unsupported startup parameter`. Typical entries: `extra_float_digits` (JDBC), "
        "`search_path`. Parameters that are tracked (`client_encoding`, `DateStyle`, `TimeZone`, "
        "`standard_conforming_strings`, `application_name` and `track_extra_parameters`) need no entry."),
    "job_name": (
        "The Windows service name of PgBouncer. Accepted for compatibility; it has no effect on Linux (syslog "
        "uses `syslog_ident`)."),
    "listen_addr": (
        "Comma-separated IPv4 or IPv6 addresses (or host names) to accept TCP connections on; `*` means every "
        "address. Empty: no TCP listener, only the unix socket."),
    "listen_backlog": (
        "Length of the kernel's queue of connections not yet accepted (the argument of `listen()`; the kernel "
        "caps it at `net.core.somaxconn`)."),
    "listen_port": (
        "TCP port to listen on; also the number in the unix socket's name (`.s.PGSQL.6432`), which is how psql "
        "finds it with `-p`."),
    "log_connections": "When set, every successful client login is logged (`login attempt: db=... user=...`).",
    "log_disconnections": "When set, every client disconnection is logged with its reason (`closing because: ...`).",
    "log_pooler_errors": (
        "When set, every error the pooler itself sends to a client (as opposed to errors from PostgreSQL) is also "
        "logged (`pooler error: ...`)."),
    "log_stats": (
        "When set, a line with the averages of the last `stats_period` is logged every `stats_period` seconds "
        "(`stats: N xacts/s, N queries/s, ...`)."),
    "logfile": (
        "Log lines are appended to this file, in PgBouncer's format. The file is reopened on reload, which is how "
        "log rotation works (Debian's logrotate sends `SIGHUP`). Empty: no log file (standard error and syslog "
        "only)."),
    "login_notify_message": (
        "Text sent to every client as a NOTICE right after it has logged in (for example a maintenance "
        "announcement). Empty sends nothing."),
    "max_client_conn": (
        "The most client connections the process accepts at once, all databases together; the next one gets `no "
        "more connections allowed (max_client_conn)`. Console logins do not count. Each client costs a file "
        "descriptor: the process's `ulimit -n` must allow this plus the server connections."),
    "max_db_client_connections": (
        "The most client connections per database (0: no limit). A database line may set its own value. The next "
        "client gets `client connections exceeded (max_db_client_connections)`."),
    "max_db_connections": (
        "The most server connections per database, all pools of that database together (0: no limit). When it is "
        "reached, clients queue even when their own pool has room; an idle connection of another pool of the "
        "database is closed to make room. A database line may set its own value."),
    "max_packet_size": (
        "The largest protocol message accepted from a client; a larger one closes the connection "
        "(`max_packet_size exceeded`)."),
    "max_prepared_statements": (
        "In transaction and statement pooling, the number of prepared statements the pooler keeps per server "
        "connection. The client's named statements are mapped to server-side statements that are prepared on "
        "whatever server connection the client gets; the least recently used one is closed when a server holds "
        "more. Protocol-level statements as in PgBouncer 1.21 and later; pgbouncer-py also maps SQL "
        "`PREPARE`/`EXECUTE`/`DEALLOCATE` (docs/prepared-statements.md). 0 turns the mapping off: named "
        "statements then only work within one transaction."),
    "max_user_client_connections": (
        "The most client connections per user (0: no limit). A `[users]` line may set its own value. The next "
        "client gets `client connections exceeded (max_user_client_connections)`."),
    "max_user_connections": (
        "The most server connections per user, all its pools together (0: no limit). A `[users]` line may set its "
        "own value."),
    "min_pool_size": (
        "The janitor opens server connections until each pool that has been used has at least this many, so that "
        "a burst after a quiet period finds connections ready. A database line may set its own value."),
    "peer_id": (
        "This process's number among processes that share a port with `so_reuseport`. The number is put in every "
        "cancel key the process hands out, so that a cancel request that reaches another process of the group is "
        "forwarded to this one through its `[peers]` entry. 0: no peering."),
    "pidfile": (
        "The process id is written here at start and the file removed at exit. Needed for `-d`. A pidfile that "
        "names a live process stops a second instance from starting."),
    "pkt_buf": (
        "Size in bytes of the buffer for one protocol message. pgbouncer-py forwards data without copying it into "
        "fixed buffers; it uses this value as the amount of data it holds for a client that waits for a server "
        "before it stops reading from that client."),
    "pool_idle_timeout": (
        "A pool that has had no client and no server connection for this many seconds is removed, so that pools "
        "of users and databases that are gone do not pile up in `SHOW POOLS`. 0 keeps pools."),
    "pool_mode": (
        "When a server connection goes back to the pool. With `session`, when the client disconnects: every "
        "PostgreSQL feature works. With `transaction`, at the end of each transaction: session state (SET, "
        "LISTEN, advisory locks, temporary tables, WITH HOLD cursors) must not outlive a transaction. With "
        "`statement`, after each statement: multi-statement transactions are refused. Can be set per database and "
        "per user; the user's wins."),
    "query_timeout": (
        "A query that runs longer than this many seconds is cancelled and the client disconnected (`query "
        "timeout`). Meant as a last resort; PostgreSQL's `statement_timeout` is usually better. Can be set per "
        "user. 0 turns it off."),
    "query_wait_notify": (
        "A client that has waited this many seconds for a server connection gets a NOTICE saying that it is "
        "queued, once per wait. 0 sends none."),
    "query_wait_timeout": (
        "A client that waits longer than this many seconds for a server connection is disconnected "
        "(`query_wait_timeout`). This is what a client sees when PostgreSQL is down or the pool is too small. Can "
        "be set per database and per user. 0 waits without limit."),
    "reserve_pool_size": (
        "Extra server connections a pool may open beyond its pool size when a client has waited "
        "`reserve_pool_timeout` seconds (log: `taking connection from reserve_pool`). A database line or a "
        "`[users]` line may set its own value. 0: no reserve."),
    "reserve_pool_timeout": "How long (seconds) a client must wait before the reserve pool is used for it.",
    "resolv_conf": (
        "An alternative `resolv.conf` for PgBouncer's c-ares resolver. pgbouncer-py uses the system resolver (or "
        "aiodns with the system's configuration): the setting is accepted and has no effect."),
    "sbuf_loopcnt": (
        "PgBouncer handles at most this many reads on one connection before it serves others. pgbouncer-py's "
        "event loop reads each ready socket once per turn anyway, so the setting is accepted and has no effect."),
    "scram_iterations": (
        "The PBKDF2 iteration count of SCRAM secrets the pooler computes itself, from a clear-text password in "
        "`auth_file`. Secrets taken from PostgreSQL keep their own count."),
    "server_check_delay": (
        "A server connection that has been idle in the pool for longer than this many seconds is checked with "
        "`server_check_query` before a client gets it; a broken one is closed. 0 checks every time a connection "
        "is taken."),
    "server_check_query": (
        "The query that checks an idle server connection, for example `select 1`. Empty sends an empty query, the "
        "cheapest round trip."),
    "server_connect_timeout": (
        "How long (seconds) connecting and logging in to a server may take before the attempt is given up and "
        "retried after `server_login_retry`."),
    "server_fast_close": (
        "When set, a server connection that must be closed (after `RECONNECT`, a changed database entry or an "
        "online restart) is closed as soon as its transaction ends, even in session pooling, instead of when its "
        "client leaves."),
    "server_idle_timeout": (
        "A server connection idle in the pool for longer than this many seconds is closed (above "
        "`min_pool_size`). 0 keeps idle connections."),
    "server_lifetime": (
        "A server connection older than this many seconds is closed the next time it is idle, so that backends do "
        "not live forever (memory growth, settings changed on the server). A database line may set its own value. "
        "0 turns it off."),
    "server_login_retry": (
        "After a failed connect or login to a server, the pool waits this many seconds before it tries again. "
        "Meanwhile the pool's clients wait (or get the last login error)."),
    "server_reset_query": (
        "Run on a server connection when it is released in session pooling, to clear what the client left behind. "
        "`DISCARD ALL` clears everything; in transaction pooling nothing is run unless "
        "`server_reset_query_always` is set. Empty runs nothing."),
    "server_reset_query_always": (
        "When set, `server_reset_query` is run after every transaction in transaction and statement pooling too. "
        "A workaround for applications that leave session state behind; it costs a round trip per transaction."),
    "server_round_robin": (
        "By default the most recently used idle server connection is handed out first, so the others can reach "
        "`server_idle_timeout` and close. When set, the connections are used in turn, which spreads the load when "
        "the servers behind one entry are several machines (a load balancer in front of replicas)."),
    "server_tls13_ciphers": "The TLS 1.3 cipher suites offered to servers; empty keeps OpenSSL's default suites.",
    "server_tls_ca_file": (
        "PEM file of the certificate authorities that server certificates must chain to, for `server_tls_sslmode` "
        "`verify-ca` and `verify-full`. Without it the system's trust store is used."),
    "server_tls_cert_file": (
        "PEM certificate presented to PostgreSQL, for the server's `cert` authentication or "
        "`clientcert=verify-ca` in its `pg_hba.conf`."),
    "server_tls_ciphers": "OpenSSL cipher list for TLS 1.2 and older towards servers (`default`: OpenSSL's default).",
    "server_tls_key_file": "PEM private key of `server_tls_cert_file`.",
    "server_tls_protocols": "TLS versions allowed towards servers, written as for `client_tls_protocols`.",
    "server_tls_sslmode": (
        "TLS towards PostgreSQL, with libpq's meaning: `disable`, `allow` (plain first, TLS if the server "
        "insists), `prefer` (TLS when the server offers it), `require` (TLS, certificate not checked), "
        "`verify-ca` (certificate chain checked), `verify-full` (chain and host name checked). Unix socket "
        "connections never use TLS. Changing a server TLS setting on reload reconnects the server connections as "
        "they become idle."),
    "service_name": (
        "Windows only (another name of `job_name`); accepted and ignored on Linux, and not shown by `SHOW "
        "CONFIG`."),
    "so_reuseport": (
        "When set, the TCP listening sockets get `SO_REUSEPORT`, so that several pooler processes can listen on "
        "the same port and the kernel spreads new connections over them. This is how PgBouncer uses more than one "
        "CPU core and how it restarts without refusing connections (start the new process, then stop the old one "
        "with `SIGTERM`). Use `peer_id` and `[peers]` so that cancel requests find their process."),
    "stats_period": (
        "Interval (seconds) over which the `avg_*` columns of `SHOW STATS` are computed and after which the stats "
        "log line is written."),
    "stats_users": (
        "Comma-separated list of users who may log in to the console and run the `SHOW` commands (except "
        "`SHOW FDS` and `SHOW TAKEOVER_STATE`, which serve online restarts), but no command that changes "
        "anything."),
    "suspend_timeout": (
        "How long (seconds) `SUSPEND` and an online restart wait for the buffers of client and server connections "
        "to drain; connections that still have data after that are closed."),
    "syslog": (
        "When set, log lines also go to syslog (through `/dev/log`), with `syslog_ident` and `syslog_facility`."),
    "syslog_facility": "Syslog facility: `auth`, `authpriv`, `daemon`, `user` or `local0` to `local7`.",
    "syslog_ident": "The program name syslog shows for the pooler's lines.",
    "tcp_defer_accept": (
        "Linux `TCP_DEFER_ACCEPT` on the listening sockets: the pooler is woken only when a new connection has "
        "sent data, which saves a wakeup per connection. The value is the number of seconds the kernel waits for "
        "that data. 0 turns it off."),
    "tcp_keepalive": (
        "When set, TCP keepalive probes are sent on client and server connections, with the kernel's timings "
        "unless `tcp_keepidle`, `tcp_keepintvl` and `tcp_keepcnt` are set. Detects peers that vanished without "
        "closing."),
    "tcp_keepcnt": "How many unanswered keepalive probes close a connection (0: the kernel's default).",
    "tcp_keepidle": "Seconds of silence before the first keepalive probe (0: the kernel's default).",
    "tcp_keepintvl": "Seconds between keepalive probes (0: the kernel's default).",
    "tcp_socket_buffer": (
        "Send and receive buffer size (bytes) of every TCP connection. 0 leaves the kernel's automatic sizing, "
        "which is usually best."),
    "tcp_user_timeout": (
        "Linux `TCP_USER_TIMEOUT` in milliseconds: a connection whose sent data stays unacknowledged this long is "
        "closed by the kernel. 0: the kernel's default."),
    "track_extra_parameters": (
        "Comma-separated startup parameters to track. Besides `client_encoding`, `DateStyle`, `TimeZone`, "
        "`standard_conforming_strings` and `application_name`, these are remembered per client and set on "
        "whatever server connection the client gets in transaction pooling. A later `SET` by the client is "
        "followed only for parameters that PostgreSQL reports back to the client (such as `IntervalStyle`)."),
    "transaction_timeout": (
        "A client whose transaction has been open for longer than this many seconds is disconnected (`transaction "
        "timeout`) and its server connection closed. Can be set per user. 0 turns it off."),
    "unix_socket_dir": (
        "Directory for the unix socket `.s.PGSQL.<listen_port>`; Debian's package uses `/var/run/postgresql`, "
        "where psql looks by default. A name starting with `@` uses Linux's abstract namespace. Empty: no unix "
        "socket. Online restart needs a unix socket in a directory."),
    "unix_socket_group": "Group that owns the unix socket (empty: the process's group).",
    "unix_socket_mode": (
        "Permissions of the unix socket file, usually written in octal (`0777`: everyone may connect)."),
    "user": (
        "When started as root, the pooler switches to this operating system user once it has opened its sockets "
        "and files (`-u` does the same). PgBouncer refuses to run as root without it."),
    "verbose": (
        "Log level above the default: 1 adds DEBUG lines, 2 adds NOISE lines. Each `-v` on the command line adds "
        "one."),
    # pgbouncer-py extensions (params.EXTENSIONS; docs/extensions.md)
    "http_listen_addr": (
        "pgbouncer-py extension. Addresses, comma-separated (`*` for all), of an HTTP listener that serves "
        "Prometheus metrics at `/metrics` (the prometheus-community exporter's names) and the probes `/health` and "
        "`/ready`. Empty (the default): no listener, and `SHOW CONFIG` lists exactly PgBouncer's settings. "
        "PgBouncer itself refuses a file that sets it."),
    "http_listen_port": "pgbouncer-py extension. TCP port of the HTTP listener of `http_listen_addr`.",
    "http_ready_check_servers": (
        "pgbouncer-py extension. With 1, `/ready` also answers 503 while the most recent server login of some "
        "database failed and no server connection to it is alive, so a load balancer stops sending clients to a "
        "pooler that cannot reach PostgreSQL."),
}

# Settings that an online restart (-R) does not change: the new process inherits the old listening sockets (and
# finds the old process through the old unix socket), so only a full stop and start applies a new value.
FULL_RESTART = frozenset({"listen_addr", "listen_port", "listen_backlog", "unix_socket_dir", "unix_socket_mode",
                          "unix_socket_group", "so_reuseport", "http_listen_addr", "http_listen_port"})
