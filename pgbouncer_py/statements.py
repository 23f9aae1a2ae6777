"""The prepared-statement table shared by protocol-level (prepare.py) and SQL-level (sqlprepare.py) statements:
one Statement per distinct (query text, parameter types), its server-side name, the per-server LRU (server.prepared)
and the kinds of entries in a server's queue of expected answers (server.psq)."""

import struct
import types
import weakref

from pgbouncer_py.objects import registry

_I32 = struct.Struct("!I")

# kinds of entries in a server's queue of expected responses (server.psq)
K_PARSE = 1        # a client's Parse forwarded as is (unnamed): its ParseComplete goes to the client
K_PARSE_NEW = 2    # a client's named Parse forwarded rewritten: goes to the client; on error undone
K_PARSE_INJ = 3    # a Parse we injected: its ParseComplete is dropped
K_BIND = 4
K_DESCRIBE = 5
K_CLOSE = 6        # a client's Close forwarded (portal or unnamed statement)
K_CLOSE_INJ = 7    # eviction Close we sent: its CloseComplete is dropped
K_EXECUTE = 8
K_SYNC = 9         # Sync: ends at ReadyForQuery
K_QUERY = 10       # simple Query / FunctionCall: ends at ReadyForQuery, errors do not skip
K_UNTRACKED = 11   # ReadyForQuery answers for Query/Sync sent before tracking began (count in entry[1])
K_SQL = 12         # a Query rewritten for SQL-level PREPARE/EXECUTE/DEALLOCATE (entry[1]: sqlprepare.Job)
K_BIND_INJ = 13    # Bind we injected (to run a SQL PREPARE before a client's extended-protocol EXECUTE): dropped
K_EXEC_INJ = 14    # its Execute: the CommandComplete is dropped; on error the statement is not on the server
K_SYN_PARSE = 15   # ParseComplete to synthesise (the Parse was not sent: the server has the statement)
K_SYN_CLOSE = 16   # CloseComplete to synthesise (Close answered by the pooler)


class Statement:
    """One distinct (query text, parameter types), shared by every client that prepares it."""

    __slots__ = ("id", "key", "sql", "server_name", "__weakref__")

    def __init__(self, sid: int, key: bytes, sql: bool = False):
        self.id = sid
        self.key = key          # Parse body after the statement name (query\0 + param types); or, for SQL
        self.sql = sql          # PREPARE (sql=True), the text after the name: "(int) AS SELECT $1"
        self.server_name = b"PGBOUNCER_%d" % sid

    def parse_message(self) -> bytes:
        body = self.server_name + b"\0" + self.key
        return b"P" + _I32.pack(len(body) + 4) + body


class Statements:
    """The global table: a statement lives while a client map or a server LRU refers to it."""

    def __init__(self):
        self.by_key: weakref.WeakValueDictionary[bytes, Statement] = weakref.WeakValueDictionary()
        self.by_sql: weakref.WeakValueDictionary[bytes, Statement] = weakref.WeakValueDictionary()
        self.next_id = 1

    def get(self, key: bytes, sql: bool = False) -> Statement:
        table = self.by_sql if sql else self.by_key
        st = table.get(key)
        if st is None:
            st = Statement(self.next_id, key, sql)
            self.next_id += 1
            table[key] = st
        return st

    def adopt(self, sid: int, key: bytes, sql: bool = False) -> Statement:
        """A statement inherited from the old process (online restart) keeps its id, hence its server name."""
        table = self.by_sql if sql else self.by_key
        st = table.get(key)
        if st is None:
            st = Statement(sid, key, sql)
            table[key] = st
        self.next_id = max(self.next_id, sid + 1)
        return st


statements = Statements()

# a client's statement names (client.prepared: name -> Statement) before its first PREPARE or named Parse: one
# read-only empty mapping shared by every such client (an idle client costs no dict); client_names() gives it its
# own dict when it names one
NO_STATEMENTS = types.MappingProxyType({})


def client_names(client) -> dict:
    """The client's own name -> Statement dict, made on first use (client.prepared starts as NO_STATEMENTS)."""
    names = client.prepared
    if names is NO_STATEMENTS:
        names = client.prepared = {}
    return names


def target_message(mtype: bytes, kind: int, server_name: bytes) -> bytes:
    body = bytes((kind,)) + server_name + b"\0"
    return mtype + _I32.pack(len(body) + 4) + body


def close_message(server_name: bytes) -> bytes:
    return target_message(b"C", 83, server_name)


# --- the server's LRU ---

def lru_touch(lru: dict, st: Statement) -> bool:
    """True when the server has `st`; it becomes the most recently used."""
    if st.id in lru:
        del lru[st.id]
        lru[st.id] = st
        return True
    return False


def lru_unevict(lru: dict, st: Statement) -> None:
    """An eviction the server did not run: `st` is back, as the oldest."""
    if st.id not in lru:
        items = list(lru.items())
        lru.clear()
        lru[st.id] = st
        lru.update(items)


def evict_for_one(server) -> list[Statement]:
    """Take the least recently used statements out of the server's LRU until one more fits."""
    lru = server.prepared
    limit = registry.cfg.max_prepared_statements
    evicted = []
    while len(lru) >= limit and lru:
        evicted.append(lru.pop(next(iter(lru))))
    return evicted


def server_add(server, st: Statement, out: list, q) -> None:
    """Record that `st` is being prepared on the server; evict the least recently used beyond the limit."""
    for old in evict_for_one(server):
        out.append(close_message(old.server_name))
        q.append((K_CLOSE_INJ, old, None))
    server.prepared[st.id] = st
