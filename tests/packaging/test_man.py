"""Man page generator (man/gen_man.py), preinst embedding and the packaging scripts: fast checks, no root."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgbouncer_py.config.params import PARAMS

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen_man = _load("gen_man", ROOT / "man" / "gen_man.py")
embed = _load("embed_files", ROOT / "debian" / "embed-files")


def P(name, kind="str", default="", reloadable=True, choices=(), doc="Some text."):  # noqa: N802
    return SimpleNamespace(name=name, kind=kind, default=default, reloadable=reloadable, choices=choices, doc=doc)


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("scram-sha-256", "scram\\-sha\\-256"),
    ("a\\b", "a\\eb"),
    (".starts with dot", "\\&.starts with dot"),
    ("'quote first", "\\&'quote first"),
    ("mid.dot's", "mid.dot's"),
])
def test_roff_escape(text, expected):
    assert gen_man.roff_escape(text) == expected


RELOAD = "A new value takes effect on reload (SIGHUP, RELOAD) or at once with SET."
ONLINE = "A new value takes effect at a restart; an online restart (\\-R) is enough."
FULL = "A new value takes effect at a full restart only (an online restart keeps the old listening sockets)."


@pytest.mark.parametrize("param, detail, expected", [
    (P("listen_port", "int", "6432", False, doc="Port."), "The `port`.",
     [".TP", ".B listen_port", "The \\fBport\\fR.", ".br", "Type: integer.", ".br", "Default: 6432.", ".br", FULL]),
    (P("logfile", doc="Log file."), "",
     [".TP", ".B logfile", "Log file.", ".br", "Type: text.", ".br", "Default: not set.", ".br", RELOAD]),
    (P("verbose", "int", "", doc="More logs."), "Each `\\-v` adds one.",
     [".TP", ".B verbose", "Each \\fB\\e\\-v\\fR adds one.", ".br", "Type: integer.", ".br",
      "Default: not set (0).", ".br", RELOAD]),
    (P("server_lifetime", "time", "3600", doc="Max age."), "",
     [".TP", ".B server_lifetime", "Max age.", ".br", "Type: seconds, fractions allowed.", ".br",
      "Default: 3600 seconds.", ".br", RELOAD]),
    (P("pool_mode", "enum", "session", choices=("session", "transaction"), doc="Mode."), "",
     [".TP", ".B pool_mode", "Mode.", ".br", "Values: session, transaction (case does not matter).", ".br",
      "Default: session.", ".br", RELOAD]),
    (P("pkt_buf", "int", "4096", False, doc="Buffer."), ".starts with a dot",
     [".TP", ".B pkt_buf", "\\&.starts with a dot", ".br", "Type: integer.", ".br", "Default: 4096.", ".br",
      ONLINE]),
])
def test_render_param(param, detail, expected):
    assert gen_man.render_param(param, detail, full_restart={"listen_port"}) == expected


@pytest.mark.parametrize("params, message", [
    ({"x": P("x", kind="float")}, "unknown kind"),
    ({"x": P("x", doc="  ")}, "no doc text"),
    ({"x": P("y")}, "names setting"),
    ({"zz_new_setting": P("zz_new_setting")}, "zz_new_setting has no description in man/doc_settings.py"),
    ({}, "empty"),
])
def test_render_rejects_bad_tables(params, message):
    with pytest.raises(ValueError, match=message):
        gen_man.render_pgbouncer5(params, "0.1.0", "2026-01-01")


def _render_warnings(source: str) -> str:
    """Run groff over a man page source with all warnings on; return what it complains about."""
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    res = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z"], input=source, capture_output=True,
                         text=True, check=True)
    return res.stderr


def test_pgbouncer5_covers_every_setting_and_renders_cleanly():
    text = gen_man.render_pgbouncer5(PARAMS, "0.1.0", "2026-01-01")
    main_section = text.split('.SH "SECTION [databases]"')[0]
    entries = [line[3:].replace("\\-", "-") for line in main_section.splitlines() if line.startswith(".B ")]
    assert [e for e in entries if e in PARAMS] == list(PARAMS)
    assert '.TH PGBOUNCER 5 "2026-01-01" "pgbouncer\\-py 0.1.0"' in text
    assert _render_warnings(text) == ""


@pytest.mark.parametrize("section", ["NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", '"ADMIN CONSOLE"', "FILES"])
def test_pgbouncer1_has_section(section):
    assert f"\n.SH {section}\n" in gen_man.render_pgbouncer1("0.1.0", "2026-01-01")


def test_pgbouncer1_lists_every_console_command_and_renders_cleanly():
    text = gen_man.render_pgbouncer1("0.1.0", "2026-01-01")
    assert "@" not in text.replace("@unix", "")
    assert '.TH PGBOUNCER 1 "2026-01-01" "pgbouncer\\-py 0.1.0"' in text
    for word in ("SHOW POOLS", "SHOW FDS", "KILL_CLIENT", "WAIT_CLOSE", "SHUTDOWN WAIT_FOR_CLIENTS"):
        assert word.replace("_", "_") in text.replace("\\-", "-"), word
    assert _render_warnings(text) == ""


@pytest.mark.parametrize("template, files, expected", [
    ("a\n@EMBED f1@\nb\n", {"f1": "x\ny\n"}, "a\nx\ny\nb\n"),
    ("@EMBED f1@\n", {"f1": ""}, ""),
    ("keep @EMBED f1@ inline\n", {"f1": "x\n"}, "keep @EMBED f1@ inline\n"),
])
def test_embed_expand(tmp_path, monkeypatch, template, files, expected):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert embed.expand(template) == expected


@pytest.mark.parametrize("text, message", [
    ("no newline", "must end with a newline"),
    ("a\nEND_OF_X\n", "here-document terminator"),
])
def test_embed_rejects(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text(text)
    with pytest.raises(SystemExit, match=message):
        embed.expand("@EMBED f@\n")


def test_preinst_embeds_the_shipped_defaults(tmp_path, monkeypatch):
    """The generated preinst is valid sh and writes byte-identical copies of the shipped conffiles."""
    monkeypatch.chdir(ROOT)
    script = embed.expand((ROOT / "debian" / "pgbouncer-py.preinst.in").read_text())
    assert "@EMBED" not in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    for function, shipped in [("default_pgbouncer_ini", "packaging/pgbouncer.ini"),
                              ("default_userlist_txt", "packaging/userlist.txt"),
                              ("default_etc_default", "packaging/pgbouncer.default"),
                              ("default_init_script", "packaging/pgbouncer.init")]:
        # Source only the function definitions (everything before the main case statement).
        defs = script.rsplit('\ncase "$1" in', 1)[0]
        res = subprocess.run(["sh", "-c", defs + f"\n{function}"], capture_output=True, check=True)
        assert res.stdout == (ROOT / shipped).read_bytes(), function


@pytest.mark.parametrize("script", ["packaging/pgbouncer.init", "debian/pgbouncer-py.postinst",
                                    "debian/pgbouncer-py.postrm", "compat/pgbouncer"])
def test_scripts_are_executable_or_valid_sh(script):
    path = ROOT / script
    if path.read_text().startswith("#!/bin/sh"):
        subprocess.run(["sh", "-n", str(path)], check=True)
    else:
        compile(path.read_text(), str(path), "exec")
    if script in ("packaging/pgbouncer.init", "compat/pgbouncer"):
        assert path.stat().st_mode & 0o111


@pytest.mark.parametrize("path, key, value", [
    ("packaging/pgbouncer.ini", "logfile", "/var/log/postgresql/pgbouncer.log"),
    ("packaging/pgbouncer.ini", "pidfile", "/var/run/postgresql/pgbouncer.pid"),
    ("packaging/pgbouncer.ini", "listen_port", "6432"),
    ("packaging/pgbouncer.ini", "unix_socket_dir", "/var/run/postgresql"),
    ("packaging/pgbouncer.ini", "auth_file", "/etc/pgbouncer/userlist.txt"),
    ("packaging/pgbouncer.service", "Type", "notify"),
    ("packaging/pgbouncer.service", "User", "postgres"),
    ("packaging/pgbouncer.service", "ExecReload", "/bin/kill -HUP $MAINPID"),
])
def test_shipped_settings(path, key, value):
    pairs = [ln.split("=", 1) for ln in (ROOT / path).read_text().splitlines()
             if "=" in ln and not ln.startswith((";", "#"))]
    assert value in [v.strip() for k, v in pairs if k.strip() == key]


@pytest.mark.parametrize("key, value", [
    ("logfile", "/var/log/postgresql/pgbouncer.log"),
    ("listen_port", 6432),
    ("auth_type", "md5"),
    ("unix_socket_dir", "/var/run/postgresql"),
])
def test_default_ini_loads_with_our_config_reader(key, value):
    """The shipped pgbouncer.ini is accepted by the project's own loader."""
    from pgbouncer_py.config import load_config

    cfg = load_config(str(ROOT / "packaging" / "pgbouncer.ini"))
    assert cfg.get(key) == value
    assert cfg.databases == {} and cfg.users == {}
