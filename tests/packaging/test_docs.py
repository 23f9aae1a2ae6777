"""The documents a DBA reads are complete and current: every setting and every console command and SHOW column is
described (man/doc_settings.py, man/doc_console.py), docs/config.md and docs/console.md are what man/gen_man.py
makes of the code today, and the links between the documents lead somewhere. Fast, no root, no PostgreSQL."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pgbouncer_py.admin import commands, show
from pgbouncer_py.config.params import ALL_PARAMS, EXTENSIONS, PARAMS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "man"))
import doc_console  # noqa: E402  (man/doc_console.py)
import doc_settings  # noqa: E402
import gen_man  # noqa: E402


@pytest.mark.parametrize("name", list(ALL_PARAMS))
def test_every_setting_has_a_description(name):
    param = ALL_PARAMS[name]
    assert param.doc.strip(), f"setting {name}: no one-line doc= in pgbouncer_py/config/params.py"
    assert doc_settings.DETAILS.get(name, "").strip(), f"setting {name}: add its description to man/doc_settings.py"


def test_descriptions_name_only_existing_settings():
    assert sorted(set(doc_settings.DETAILS) - set(ALL_PARAMS)) == []
    assert sorted(n for n in doc_settings.FULL_RESTART if n not in ALL_PARAMS or ALL_PARAMS[n].reloadable) == []


@pytest.mark.parametrize("command", sorted(show.SHOW_COMMANDS))
def test_every_show_command_and_column_is_described(command):
    assert command in doc_console.SHOW, f"SHOW {command.upper()}: add it to man/doc_console.py (SHOW)"
    summary, columns = doc_console.SHOW[command]
    names = [c[0] for c in doc_console.SHOW_COLUMNS[command]]
    assert summary.strip()
    assert [n for n in names if not columns.get(n, "").strip()] == [], f"SHOW {command.upper()}: undocumented columns"
    assert sorted(set(columns) - set(names)) == [], f"SHOW {command.upper()}: documented columns it does not have"


def test_show_column_lists_are_the_consoles():
    """SHOW_COLUMNS names the lists the console sends: compare with what the show functions answer."""
    class Console:
        client = None

    for command, fn in show.SHOW_COMMANDS.items():
        if command in ("fds", "takeover_state"):
            continue  # they need a live online-restart client
        try:
            res = fn(Console(), command)
        except Exception:  # noqa: BLE001 - a SHOW that needs a running process: its list is checked by name
            continue
        assert res.columns == doc_console.SHOW_COLUMNS[command], command


def test_every_console_command_is_described():
    words = {doc_console.COMMAND_KEYS.get(syntax, syntax.split()[0].lower()) for syntax, _ in doc_console.COMMANDS}
    assert sorted(set(commands.ADMIN_COMMANDS) - words) == []
    assert words == doc_console.COMMAND_WORDS
    gen_man.check_console(show.SHOW_COMMANDS, commands.ADMIN_COMMANDS)


@pytest.mark.parametrize("name", ["config.md", "console.md"])
def test_generated_docs_are_current(name):
    text = gen_man.docs()[name]
    assert (ROOT / "docs" / name).read_text() == text, \
        f"docs/{name} is out of date: run  python3 man/gen_man.py --docs-dir docs"


def test_config_md_and_pgbouncer5_have_every_setting():
    md = (ROOT / "docs" / "config.md").read_text()
    page = gen_man.render_pgbouncer5(PARAMS, "0.1.0", "2026-01-01", extensions=EXTENSIONS)
    for name in ALL_PARAMS:
        assert f"\n## {name}\n" in md
        assert f"\n.B {gen_man.roff_escape(name)}\n" in page


def test_console_md_and_pgbouncer1_have_every_column():
    md = (ROOT / "docs" / "console.md").read_text()
    page = gen_man.render_pgbouncer1("0.1.0", "2026-01-01")
    for command, columns in doc_console.SHOW_COLUMNS.items():
        section = md.split(f"\n### SHOW {command.upper()}\n", 1)[1].split("\n### ", 1)[0]
        for name, _ in columns:
            assert f"| `{name}` |" in section, (command, name)
            assert f".B {gen_man.roff_escape(name)}" in page, (command, name)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "packaging" / "README.md", ROOT / "bench" / "README.md",
            *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_documents_lead_somewhere(path):
    """Markdown links (relative to the file) and `dir/file` paths of the repository (relative to its root)."""
    text = path.read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in t]
    paths = re.findall(r"`((?:docs|packaging|man|scripts|tests|bench|debian|compat)/[\w./-]*\w)`", text)
    missing = [t for t in links if not (path.parent / t).exists()]
    missing += [t for t in paths if not (ROOT / t).exists() and not list(ROOT.glob(t))]
    assert missing == []
