"""The import graph of pgbouncer_py: no cycle, and no pgbouncer_py import hidden inside a function.

Every module is parsed (ast, nothing imported); an edge A -> B is any import of B by A, at module level or inside a
function. A function-local import is how a cycle is usually hidden, so those are listed too; imports of optional
dependencies (uvloop, aiodns, ldap3, prometheus_client, ...) may stay inside functions: they are not pgbouncer_py.
The one exception is the compiled scanner (proto/_scan), a C extension that is optional by design."""

import ast
from pathlib import Path

PACKAGE = "pgbouncer_py"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
# pgbouncer_py modules that may be imported where their absence is handled (try: ... except ImportError)
OPTIONAL = {"pgbouncer_py.proto._scan"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _targets(node: ast.AST, here: str, is_pkg: bool, known: dict[str, Path]) -> list[str]:
    """The pgbouncer_py modules one import statement loads by name (a submodule when `from X import name` names
    one, else X itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = here.split(".") if is_pkg else here.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod.split(".")[0] != PACKAGE:
        return []
    out = []
    for a in node.names:
        sub = f"{mod}.{a.name}"
        out.append(sub if sub in known else mod)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def scan() -> tuple[dict[str, set[str]], list[str]]:
    """(graph: module -> modules it imports, function-local imports as 'file:line: module')."""
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    local: set[tuple[str, int, str]] = set()

    def visit(node, mod, path, in_function):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue            # not imported at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, mod, path.name == "__init__.py", known):
                    if target in OPTIONAL or target == mod:
                        continue
                    graph[mod].add(target)
                    if in_function:
                        local.add((str(path.relative_to(ROOT.parent)), child.lineno, target))
                continue
            visit(child, mod, path,
                  in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for mod, path in known.items():
        visit(ast.parse(path.read_text(), str(path)), mod, path, False)
    return graph, [f"{file}:{line}: {target}" for file, line, target in sorted(local)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as one cycle through all of its
    modules where there is one, sorted for a stable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(comps)


def _short_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One shortest cycle inside a component, starting at its first module (breadth-first)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _short(m: str) -> str:
    return m.removeprefix(PACKAGE + ".")


def describe(graph: dict[str, set[str]], comps: list[list[str]]) -> str:
    """Each cycle: its modules, one shortest loop through it, and every import inside it (the ones to cut)."""
    lines = []
    for comp in comps:
        members = set(comp)
        loop = " -> ".join(_short(m) for m in _short_cycle(graph, comp))
        edges = ", ".join(f"{_short(a)} -> {_short(b)}" for a in comp for b in sorted(graph[a] & members))
        lines.append(f"cycle among {', '.join(_short(m) for m in comp)}\n    e.g. {loop}\n    imports: {edges}")
    return "\n".join(lines)


# --- the checker itself, on small made-up graphs ---
def test_cycles_finds_each_strongly_connected_component():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _short_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    text = describe(graph, cycles(graph))
    assert "cycle among d, e\n    e.g. d -> e -> d\n    imports: d -> e, e -> d" in text


def test_cycles_none_in_a_tree():
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_targets_resolves_submodules_packages_and_relative_imports():
    known = dict.fromkeys(["pgbouncer_py", "pgbouncer_py.admin", "pgbouncer_py.admin.show",
                           "pgbouncer_py.objects", "pgbouncer_py.log"])

    def targets(src, here="pgbouncer_py.admin.show", is_pkg=False):
        return _targets(ast.parse(src).body[0], here, is_pkg, known)

    assert targets("from pgbouncer_py.admin import show") == ["pgbouncer_py.admin.show"]
    assert targets("from pgbouncer_py import VERSION_STRING") == ["pgbouncer_py"]
    assert targets("from pgbouncer_py.objects import registry") == ["pgbouncer_py.objects"]
    assert targets("import pgbouncer_py.log") == ["pgbouncer_py.log"]
    assert targets("from .. import log") == ["pgbouncer_py.log"]
    assert targets("from . import show", "pgbouncer_py.admin", True) == ["pgbouncer_py.admin.show"]
    assert targets("import asyncio") == []


# --- the package ---
def test_package_is_scanned():
    graph, _local = scan()
    assert "pgbouncer_py.main" in graph and "pgbouncer_py.admin.console" in graph
    assert "pgbouncer_py.objects" in graph["pgbouncer_py.admin.console"]


def test_no_import_cycle():
    graph, _local = scan()
    found = cycles(graph)
    assert not found, "import cycles in pgbouncer_py:\n" + describe(graph, found)


def test_no_function_local_import_of_the_package():
    _graph, local = scan()
    assert not local, "pgbouncer_py modules imported inside functions (import them at module level):\n" + \
        "\n".join(local)
