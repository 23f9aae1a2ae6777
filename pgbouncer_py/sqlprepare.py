"""SQL-level PREPARE / EXECUTE / DEALLOCATE in transaction and statement pooling (beyond PgBouncer).

A client's `PREPARE name AS ...` becomes `PREPARE "PGBOUNCER_n" AS ...` on whichever server connection runs it,
sharing the statement table, the per-server LRU and the client's name map with protocol-level statements (they
are one namespace in PostgreSQL too). `EXECUTE name(...)` is rewritten to the server's name, preceded in the same
query string by the PREPARE when the server does not have the statement yet (and by the DEALLOCATEs of LRU
evictions). The client sees what one PostgreSQL session would show: the same command tags, PostgreSQL's error
texts and SQLSTATEs (errors the pooler decides are raised by the server itself, through a DO block, so that they
abort a transaction block like the real ones), and error positions mapped back onto the client's text.

Works on one Query at a time: prepare.client_at calls client_query() for a Query text that may be one of the
commands, and prepare.server_at hands CommandComplete/ErrorResponse answering it to response()."""

from pgbouncer_py import statements as stmts
from pgbouncer_py.proto import sql
from pgbouncer_py.proto.build import command_complete, msg


class Job:
    """What one rewritten Query changes, in the order the server runs it, to undo what an error prevented."""

    __slots__ = ("client", "server", "actions", "hide", "tag", "strip_context", "prefix_chars", "name_start",
                 "name_end", "delta", "rename")

    def __init__(self, client, server):
        self.client = client
        self.server = server
        self.actions: list = []        # (op, statement, name); the first `hide` ones are the injected prefix
        self.hide = 0                  # CommandCompletes of injected statements still to drop
        self.tag: bytes | None = None  # replaces the client's own command tag (the DO used as a no-op)
        self.strip_context = False     # the error comes from our DO block: drop its CONTEXT line
        self.prefix_chars = 0          # characters injected before the client's text
        self.name_start = 0            # the name in the client's text, in characters: [name_start, name_end)
        self.name_end = 0
        self.delta = 0                 # length of the server's name minus the client's, in characters
        self.rename = (b"", b"")       # '"PGBOUNCER_n"' -> '"name"' in error texts


def _chars(b: bytes) -> int:
    return len(b.decode("utf-8", "replace"))


def query_message(text: bytes) -> bytes:
    return msg(b"Q", text + b"\0")


def _dollar_quote(text: bytes, base: bytes) -> bytes:
    tag, k = b"$" + base + b"$", 0
    while tag in text:
        k += 1
        tag = b"$%s%d$" % (base, k)
    return tag + text + tag


def raise_text(sqlstate: str, message: bytes) -> bytes:
    """A statement the server fails with exactly this SQLSTATE and message (and aborts a transaction block)."""
    body = (b"BEGIN RAISE EXCEPTION USING ERRCODE = '" + sqlstate.encode() + b"', MESSAGE = "
            + _dollar_quote(message, b"pgbm") + b"; END")
    return b"DO " + _dollar_quote(body, b"pgbouncer")


NOOP_TEXT = b"DO $pgbouncer$BEGIN END$pgbouncer$"     # succeeds, or fails in an aborted transaction as PostgreSQL would


def _quoted(st) -> bytes:
    return b'"' + st.server_name + b'"'


def client_query(client, server, text: bytes, q, stats, k_sql: int):
    """A Query whose text may be PREPARE/EXECUTE/DEALLOCATE: the message to send instead (and a K_SQL entry
    appended to q), or None to forward it untouched."""
    scs = server.params.get("standard_conforming_strings", "on") != "off"
    job = Job(client, server)
    try:
        cmd = sql.parse(text, scs)
    except sql.SqlError as e:
        return _error(job, q, k_sql, "0A000", str(e).encode())
    if cmd is None or cmd.kind == "deallocate all":
        return None
    name = cmd.name
    st = client.prepared.get(name)
    if cmd.kind == "prepare":
        stats.client_parse_count += 1
        if st is not None:
            return _error(job, q, k_sql, "42P05", b'prepared statement "%s" already exists' % name)
        st = stmts.statements.get(cmd.rest, sql=True)
        stmts.client_names(client)[name] = st
        lru = server.prepared
        if stmts.lru_touch(lru, st):
            return _noop(job, q, k_sql, b"PREPARE", ("known", st, name))
        prefix = _evictions(job, server)
        lru[st.id] = st
        stats.server_parse_count += 1
        job.actions.append(("prepare", st, name))
        return _rewritten(job, q, k_sql, prefix, text, cmd, st)
    if st is None:
        return _error(job, q, k_sql, "26000", b'prepared statement "%s" does not exist' % name)
    if cmd.kind == "deallocate":
        del client.prepared[name]
        return _noop(job, q, k_sql, b"DEALLOCATE", ("dealloc", st, name))
    if not st.sql:
        return _error(job, q, k_sql, "0A000", b'prepared statement "%s" was prepared with the extended query '
                      b"protocol; EXECUTE of it is not supported in transaction pooling" % name)
    stats.bind_count += 1
    lru = server.prepared
    prefix = b""
    if not stmts.lru_touch(lru, st):
        prefix = _evictions(job, server)
        prefix += b"PREPARE " + _quoted(st) + st.key + b"\n;\n"
        lru[st.id] = st
        stats.server_parse_count += 1
        job.actions.append(("load", st, None))
        job.hide += 1
    job.actions.append(("execute", st, name))
    return _rewritten(job, q, k_sql, prefix, text, cmd, st)


def _evictions(job: Job, server) -> bytes:
    """Make room in the server's LRU for one statement: DEALLOCATE text for each evicted one."""
    parts = []
    for old in stmts.evict_for_one(server):
        parts.append(b'DEALLOCATE "' + old.server_name + b'";\n')
        job.actions.append(("evict", old, None))
        job.hide += 1
    return b"".join(parts)


def _rewritten(job: Job, q, k_sql: int, prefix: bytes, text: bytes, cmd, st) -> bytes:
    job.prefix_chars = _chars(prefix)
    job.name_start = _chars(text[:cmd.name_start])
    new = _quoted(st)
    job.name_end = job.name_start + len(new)
    job.delta = len(new) - _chars(text[cmd.name_start:cmd.name_end])
    job.rename = (new, b'"' + cmd.name + b'"')
    q.append((k_sql, job, None))
    return query_message(prefix + cmd.rewrite(text, new))


def _noop(job: Job, q, k_sql: int, tag: bytes, action) -> bytes:
    job.tag = tag
    job.strip_context = True
    job.actions.append(action)
    q.append((k_sql, job, None))
    return query_message(NOOP_TEXT)


def _error(job: Job, q, k_sql: int, sqlstate: str, message: bytes) -> bytes:
    job.strip_context = True
    q.append((k_sql, job, None))
    return query_message(raise_text(sqlstate, message))


def parse_execute(client, server, key: bytes, out: list, q, stats) -> bool:
    """An unnamed Parse whose text may be `EXECUTE name(...)` of a SQL-prepared statement (psycopg 3 or asyncpg
    with parameters, JDBC): rewrite the name, and first run the PREPARE with an injected unnamed
    Parse/Bind/Execute when the server lacks the statement (an error there skips the client's messages up to
    Sync, as it should). False: forward the Parse untouched."""
    qend = key.find(b"\0")
    text = key[:qend]
    scs = server.params.get("standard_conforming_strings", "on") != "off"
    try:
        cmd = sql.parse(text, scs)
    except sql.SqlError:
        return False
    if cmd is None or cmd.kind != "execute":
        return False
    st = client.prepared.get(cmd.name)
    if st is None or not st.sql:
        return False                  # PostgreSQL answers: prepared statement "name" does not exist
    stats.bind_count += 1
    lru = server.prepared
    if not stmts.lru_touch(lru, st):
        stmts.server_add(server, st, out, q)
        out.append(msg(b"P", b"\0PREPARE " + _quoted(st) + st.key + b"\0\0\0"))
        q.append((stmts.K_PARSE_INJ, st, None))
        out.append(msg(b"B", b"\0\0\0\0\0\0\0\0"))
        q.append((stmts.K_BIND_INJ, None, None))
        out.append(msg(b"E", b"\0\0\0\0\0"))
        q.append((stmts.K_EXEC_INJ, st, None))
        stats.server_parse_count += 1
    out.append(msg(b"P", b"\0" + cmd.rewrite(text, _quoted(st)) + key[qend:]))
    q.append((stmts.K_PARSE, None, None))
    return True


def client_names_in_error(client, error: bytes) -> bytes:
    """An ErrorResponse that names one of the pooler's statements ("PGBOUNCER_7") gets the client's name."""
    at = error.find(b'"PGBOUNCER_')
    if at < 0:
        return error
    end = error.find(b'"', at + 11)
    sid = error[at + 11:end]
    if not sid.isdigit():
        return error
    sid = int(sid)
    for name, st in client.prepared.items():
        if st.id == sid:
            return msg(b"E", error[5:].replace(error[at:end + 1], b'"' + name + b'"'))
    return error


# --- server -> client ---

def response(job: Job, t: int, body: bytes) -> bytes | None:
    """A CommandComplete (t=67) or ErrorResponse (t=69) answering a rewritten Query: what the client gets."""
    if t == 67:
        if job.hide:
            job.hide -= 1
            job.actions.pop(0)
            return None
        job.actions.clear()
        return command_complete(job.tag.decode()) if job.tag is not None else msg(b"C", body)
    if job.actions and job.actions[0][0] == "evict" and b"C26000\0" in body and \
            b'"' + job.actions[0][1].server_name + b'"' in body:
        job.actions.pop(0)         # the evicted statement was already gone (deallocated behind our back)
    undo(job)
    return _error_fields(job, body)


def undo(job: Job) -> None:
    """The server did not run the statements still pending: put the maps back as they were."""
    lru = job.server.prepared
    names = job.client.prepared
    for op, st, name in job.actions:
        if op == "evict":
            stmts.lru_unevict(lru, st)
        elif op == "load":
            lru.pop(st.id, None)
        elif op == "prepare":
            lru.pop(st.id, None)
            if names.get(name) is st:
                del names[name]
        elif op == "known":
            if names.get(name) is st:
                del names[name]
        elif op == "dealloc":
            if name not in names:
                names = stmts.client_names(job.client)
                names[name] = st
    job.actions.clear()
    job.hide = 0


def _error_fields(job: Job, body: bytes) -> bytes:
    fields = []
    for f in body.split(b"\0"):
        if not f:
            continue
        code = f[0]
        if code == 87 and job.strip_context:               # 'W' context of our DO block
            continue
        if code == 80:                                     # 'P' position in the text the server got
            p = int(f[1:] or b"0") - job.prefix_chars
            if p <= 0:
                continue                                   # inside what the pooler added
            if p > job.name_end:
                p -= job.delta
            elif p > job.name_start:
                p = job.name_start + 1
            f = b"P%d" % p
        elif (code == 77 or code == 68) and job.rename[0] and job.rename[0] in f:   # 'M' message, 'D' detail
            f = f.replace(*job.rename)
        fields.append(f + b"\0")
    out = b"".join(fields) + b"\0"
    return msg(b"E", out)
