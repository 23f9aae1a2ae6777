"""objects.py: state moves (legal ones move between the pool's lists, illegal ones close that connection),
links, counts that are list lengths, and no link or state set outside objects.py."""

import ast
from pathlib import Path

import pytest

from pgbouncer_py import objects
from pgbouncer_py.objects import (
    CL_ACTIVE,
    CL_FREE,
    CL_LOGIN,
    CL_WAITING,
    CL_WAITING_LOGIN,
    SV_ACTIVE,
    SV_FREE,
    SV_IDLE,
    SV_LOGIN,
    SV_USED,
    Database,
    Pool,
    User,
    registry,
    set_client_state,
    set_server_state,
)


class Conn:
    def __init__(self, pool):
        self.pool = pool
        self.state = None
        self.link = None
        self.closed_with = None

    def prefix(self) -> str:
        return "X-test: "

    def close(self, reason: str) -> None:
        self.closed_with = reason
        if self.pool is not None:
            (set_client_state if isinstance(self, Client) else set_server_state)(self, CL_FREE)


class Client(Conn):
    pass


class Server(Conn):
    pass


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(registry, "login_clients", {})
    monkeypatch.setattr(registry, "clients", {})
    return Pool(Database("db"), User("u"))


def where(pool, conn) -> list[str]:
    names = [n for n in objects.SERVER_LISTS.values() if conn in getattr(pool, n)]
    names += [n for n in ("waiting_clients", "active_clients") if conn in getattr(pool, n)]
    return names + (["login_clients"] if conn in registry.login_clients else [])


@pytest.mark.parametrize(("moves", "lists"), [
    ([SV_LOGIN], ["login_servers"]),
    ([SV_LOGIN, SV_IDLE], ["idle_servers"]),
    ([SV_LOGIN, SV_IDLE, SV_ACTIVE], ["active_servers"]),
    ([SV_LOGIN, SV_IDLE, SV_USED, SV_IDLE], ["idle_servers"]),
    ([SV_LOGIN, SV_IDLE, SV_FREE], []),
])
def test_a_server_is_in_the_list_of_its_state(pool, moves, lists):
    s = Server(pool)
    for state in moves:
        set_server_state(s, state)
    assert s.state == moves[-1] and where(pool, s) == lists and s.closed_with is None
    assert pool.server_count() == len(lists)


@pytest.mark.parametrize(("before", "move"), [
    ([SV_LOGIN, SV_FREE], SV_IDLE),          # a closed server never comes back
    ([SV_LOGIN, SV_IDLE], SV_LOGIN),         # only a new one logs in
    ([SV_LOGIN], "no-such-state"),
])
def test_an_illegal_server_move_is_an_internal_error_that_closes_it(pool, before, move, capsys):
    s = Server(pool)
    for state in before:
        set_server_state(s, state)
    set_server_state(s, move)
    assert s.state == SV_FREE and where(pool, s) == []
    assert s.closed_with == ("internal error" if before[-1] != SV_FREE else None)
    assert f"internal error: illegal state change {before[-1]} -> {move}" in capsys.readouterr().err


@pytest.mark.parametrize(("moves", "legal"), [
    ([CL_LOGIN, CL_ACTIVE, CL_WAITING, CL_ACTIVE, CL_FREE], True),
    ([CL_LOGIN, CL_WAITING_LOGIN, CL_ACTIVE], True),
    ([CL_LOGIN, CL_ACTIVE, CL_WAITING_LOGIN], False),     # waiting for a login after it
    ([CL_LOGIN, CL_ACTIVE, CL_LOGIN], False),
    ([CL_LOGIN, CL_FREE, CL_ACTIVE], False),
])
def test_client_moves(pool, moves, legal, capsys):
    c = Client(pool)
    for state in moves:
        set_client_state(c, state)
    err = capsys.readouterr().err
    if legal:
        assert c.state == moves[-1] and "internal error" not in err
    else:
        assert c.state == CL_FREE and "internal error: illegal state change" in err


def test_counts_are_list_lengths(pool):
    clients = [Client(pool) for _ in range(3)]
    for c in clients:
        set_client_state(c, CL_LOGIN)
    assert registry.total_clients == 3 and len(registry.login_clients) == 3
    set_client_state(clients[0], CL_ACTIVE)
    set_client_state(clients[1], CL_FREE)
    assert registry.total_clients == 2 and pool.client_count() == 1
    db, user = pool.db, pool.user
    db.clients[clients[0]] = None
    user.clients[clients[0]] = None
    assert db.client_count == 1 and user.client_count == 1
    dyn = objects.DbUser(user, "secret")
    assert dyn.client_count == 1 and dyn.clients is user.clients     # a DbUser counts as its global user


def test_link_and_unlink(pool):
    c, s = Client(pool), Server(pool)
    set_client_state(c, CL_LOGIN)
    set_client_state(c, CL_ACTIVE)
    set_server_state(s, SV_LOGIN)
    set_server_state(s, SV_IDLE)
    objects.link(c, s)
    assert (c.link, s.link, s.state) == (s, c, SV_ACTIVE) and where(pool, s) == ["active_servers"]
    objects.unlink(c, s)
    assert (c.link, s.link) == (None, None)


def test_links_and_states_are_set_only_in_objects_py():
    """objects.py owns every link and every state move: outside it, `.link` and `.state` are assigned only in a
    constructor (to None). Parsed, not imported."""
    root = Path(__file__).resolve().parents[2] / "pgbouncer_py"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "objects.py" and path.parent == root:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or func.name == "__init__":
                continue
            for node in ast.walk(func):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                for t in targets:
                    for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                        if isinstance(el, ast.Attribute) and el.attr in ("link", "state"):
                            found.append(f"{path.relative_to(root.parent)}:{el.lineno} {func.name}: .{el.attr}")
    assert not found, "links or states set outside objects.py:\n" + "\n".join(found)
