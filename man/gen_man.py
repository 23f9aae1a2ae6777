"""Generate pgbouncer(1), pgbouncer(5), docs/config.md and docs/console.md from the code that holds the truth.

Settings: the table pgbouncer_py/config/params.py (name, type, default, reloadable, one-line doc) and the longer
texts of man/doc_settings.py. Console: the column lists of pgbouncer_py/admin/show.py and the texts of
man/doc_console.py. pgbouncer(1) is man/pgbouncer.1.in with the console commands filled in.

    python3 man/gen_man.py --man-dir DIR     pgbouncer.1 and pgbouncer.5 (the Debian package build does this)
    python3 man/gen_man.py --docs-dir docs   docs/config.md and docs/console.md (committed; a test checks them)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Mapping

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

KIND_TEXT = {
    "str": "text",
    "int": "integer",
    "bool": "0 (off) or 1 (on)",
    "mode": "file mode, usually written in octal",
    "time": "seconds, fractions allowed",
    "enum": "one of a fixed set of words",
}

# When a changed value takes effect (see takes_effect)
EFFECT_TEXT = {
    "reload": "on reload (SIGHUP, RELOAD) or at once with SET",
    "online restart": "at a restart; an online restart (-R) is enough",
    "restart": "at a full restart only (an online restart keeps the old listening sockets)",
}

TYPE_NAMES = {25: "text", 23: "int4", 20: "int8", 1700: "numeric", 17: "bytea"}


def roff_escape(text: str) -> str:
    """Escape text for a roff body line: backslashes, hyphens (they name options and values here)
    and a leading control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    if out[:1] in (".", "'"):
        out = "\\&" + out
    return out


def roff_text(text: str) -> str:
    """Doc text (`names` in backquotes) as a roff body line: the names in bold."""
    parts = re.split(r"`([^`]*)`", text.replace("\\", "\\e").replace("-", "\\-"))
    out = "".join(p if i % 2 == 0 else "\\fB" + p + "\\fR" for i, p in enumerate(parts))
    return "\\&" + out if out[:1] in (".", "'") or out.startswith(("\\fB.", "\\fB'")) else out


def describe_default(param) -> str:
    if param.default == "":
        return "not set" if param.kind == "str" else "not set (0)"
    if param.kind == "time":
        return f"{param.default} seconds" if param.default != "1" else "1 second"
    return param.default


def takes_effect(param, full_restart=None) -> str:
    """'reload', 'online restart' or 'restart': when a new value of this setting is used."""
    if param.reloadable:
        return "reload"
    if full_restart is None:
        from doc_settings import FULL_RESTART as full_restart
    return "restart" if param.name in full_restart else "online restart"


def check_params(params: Mapping, details: Mapping[str, str]) -> None:
    """The table must be complete: every setting a known kind, a one-line doc and a longer text."""
    if not params:
        raise ValueError("gen_man: the settings table is empty")
    for name, param in params.items():
        if name != param.name:
            raise ValueError(f"gen_man: table key {name!r} names setting {param.name!r}")
        if param.kind not in KIND_TEXT:
            raise ValueError(f"gen_man: setting {param.name} has unknown kind {param.kind!r}")
        if not param.doc.strip():
            raise ValueError(f"gen_man: setting {param.name} has no doc text (doc= in pgbouncer_py/config/params.py)")
        if not details.get(name, "").strip():
            raise ValueError(f"gen_man: setting {param.name} has no description in man/doc_settings.py (DETAILS)")


def _values_line(param) -> str:
    if param.choices:
        return "Values: " + ", ".join(param.choices) + " (case does not matter)."
    return f"Type: {KIND_TEXT[param.kind]}."


def render_param(param, detail: str = "", full_restart=frozenset()) -> list[str]:
    """The .TP entry of one setting."""
    if param.kind not in KIND_TEXT:
        raise ValueError(f"gen_man: setting {param.name} has unknown kind {param.kind!r}")
    if not param.doc.strip():
        raise ValueError(f"gen_man: setting {param.name} has no doc text")
    lines = [".TP", f".B {roff_escape(param.name)}", roff_text((detail or param.doc).strip())]
    lines += [".br", roff_escape(_values_line(param))]
    lines += [".br", roff_escape(f"Default: {describe_default(param)}.")]
    effect = takes_effect(param, full_restart)
    lines += [".br", roff_escape(f"A new value takes effect {EFFECT_TEXT[effect]}.")]
    return lines


def _template(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


EXTENSIONS_TEXT = ("Settings of pgbouncer-py that PgBouncer does not have (docs/extensions.md). A file without "
                   "them is read exactly as PgBouncer reads it; PgBouncer refuses a file that sets them.")


def render_pgbouncer5(params: Mapping, version: str, date: str, details: Mapping[str, str] | None = None,
                      full_restart=None, extensions: Mapping | None = None) -> str:
    """The whole pgbouncer.5 source for the given settings table."""
    if details is None or full_restart is None:
        import doc_settings
        details = doc_settings.DETAILS if details is None else details
        full_restart = doc_settings.FULL_RESTART if full_restart is None else full_restart
    check_params(params, details)
    head, tail = _template("pgbouncer.5.in").split("@SETTINGS@\n")
    lines = [head.replace("@DATE@", date).replace("@VERSION@", roff_escape(version)).rstrip("\n")]
    for name, param in params.items():
        lines += render_param(param, details[name], full_restart)
    if extensions:
        check_params(extensions, details)
        lines += [".SS \"pgbouncer-py extensions\"", roff_text(EXTENSIONS_TEXT)]
        for name, param in extensions.items():
            lines += render_param(param, details[name], full_restart)
    return "\n".join(lines) + "\n" + tail


# --- docs/config.md -------------------------------------------------------------------------------------------
CONFIG_MD_HEAD = """# pgbouncer.ini: the [pgbouncer] settings

<!-- Generated by man/gen_man.py from pgbouncer_py/config/params.py and man/doc_settings.py; do not edit. -->

pgbouncer-py reads PgBouncer's `pgbouncer.ini` unchanged. This page lists every setting of the `[pgbouncer]`
section, in the order `SHOW CONFIG` lists them, with its type, default and when a changed value takes effect:

- **reload**: on `SIGHUP` or the console's `RELOAD` (the Debian service: `service pgbouncer reload`), or at once
  with the console's `SET` (until the next reload);
- **online restart**: when a new process starts; `pgbouncer -R` (the init script's `restart`) is enough, and
  clients stay connected;
- **restart**: only after a full stop and start (an online restart inherits the old listening sockets).

The file's syntax, the `[databases]`, `[users]` and `[peers]` sections and the auth and HBA files are described in
pgbouncer(5) (`man 5 pgbouncer`); the same page lists these settings. Times are in seconds (fractions allowed),
booleans are `0` or `1`, integers may be written in octal (`0640`) or hexadecimal (`0x1f`).

| setting | default | takes effect | what it is |
|---|---|---|---|
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_default(param) -> str:
    return f"`{param.default}`" if param.default != "" else "not set"


def render_config_md(params: Mapping, details: Mapping[str, str] | None = None, full_restart=None,
                     extensions: Mapping | None = None) -> str:
    if details is None or full_restart is None:
        import doc_settings
        details = doc_settings.DETAILS if details is None else details
        full_restart = doc_settings.FULL_RESTART if full_restart is None else full_restart
    check_params(params, details)
    out = [CONFIG_MD_HEAD]
    for name, p in params.items():
        out.append(f"| [`{name}`](#{name}) | {_md_cell(_md_default(p))} | {takes_effect(p, full_restart)} | "
                   f"{_md_cell(p.doc.strip())} |\n")
    if extensions:
        check_params(extensions, details)
        out.append(f"\n**pgbouncer-py extensions.** {EXTENSIONS_TEXT}\n\n| setting | default | takes effect | what it is |\n"
                   "|---|---|---|---|\n")
        for name, p in extensions.items():
            out.append(f"| [`{name}`](#{name}) | {_md_cell(_md_default(p))} | {takes_effect(p, full_restart)} | "
                       f"{_md_cell(p.doc.strip())} |\n")
    for name, p in {**params, **(extensions or {})}.items():
        values = ("one of " + ", ".join(f"`{c}`" for c in p.choices)) if p.choices else KIND_TEXT[p.kind]
        out.append(f"\n## {name}\n\n{details[name].strip()}\n\n"
                   f"Type: {values}. Default: {_md_default(p)}. "
                   f"A new value takes effect {EFFECT_TEXT[takes_effect(p, full_restart)]}.\n")
    return "".join(out)


# --- the console: pgbouncer(1) and docs/console.md ---------------------------------------------------------------
def check_console(show_commands, admin_commands, doc=None) -> None:
    """Every SHOW command and console command of the code is documented, every column of each SHOW."""
    if doc is None:
        import doc_console as doc
    missing = sorted(set(show_commands) - set(doc.SHOW))
    if missing:
        raise ValueError(f"gen_man: SHOW {', '.join(missing)} not documented in man/doc_console.py (SHOW)")
    extra = sorted(set(doc.SHOW) - set(show_commands))
    if extra:
        raise ValueError(f"gen_man: man/doc_console.py documents SHOW {', '.join(extra)}, which the console lacks")
    for cmd, (summary, columns) in doc.SHOW.items():
        names = [c[0] for c in doc.SHOW_COLUMNS[cmd]]
        undocumented = [n for n in names if not columns.get(n, "").strip()]
        if undocumented or not summary.strip():
            raise ValueError(f"gen_man: SHOW {cmd.upper()}: no description in man/doc_console.py for "
                             f"{', '.join(undocumented) or 'the command'}")
        stale = sorted(set(columns) - set(names))
        if stale:
            raise ValueError(f"gen_man: SHOW {cmd.upper()} has no column {', '.join(stale)} (man/doc_console.py)")
    missing = sorted(set(admin_commands) - doc.COMMAND_WORDS)
    if missing:
        raise ValueError(f"gen_man: console command {', '.join(missing)} not documented in man/doc_console.py")


def _console_code():
    from pgbouncer_py.admin import commands, show
    return show.SHOW_COMMANDS, commands.ADMIN_COMMANDS


def render_console_roff() -> str:
    import doc_console as doc
    check_console(*_console_code())
    lines = ['.SS "SHOW commands"',
             "Each answers with rows; users in",
             ".B stats_users",
             "may run them all but",
             ".B \"SHOW FDS\"",
             "and",
             ".BR \"SHOW TAKEOVER_STATE\" .",
             ".B SHOW HELP",
             "lists the commands."]
    for cmd, (summary, columns) in doc.SHOW.items():
        lines += [".TP", f'.B "SHOW {cmd.upper()}"', roff_text(summary)]
        for name, oid in doc.SHOW_COLUMNS[cmd]:
            type_name = TYPE_NAMES.get(oid, "")
            lines += [".RS", ".TP", f".B {roff_escape(name)}" + (f" \\fR({type_name})" if type_name else ""),
                      roff_text(columns[name]), ".RE"]
    lines += ['.SS "Process control"', "For users in", ".B admin_users", "only."]
    for syntax, summary in doc.COMMANDS:
        words = syntax.split()
        keyword = " ".join(w for w in words if w.isupper() or w in ("=",))
        args = " ".join(w for w in words if not (w.isupper() or w in ("=",)))
        line = f'.B "{roff_escape(keyword)}"' if not args else \
            f'.BI "{roff_escape(keyword)} " "{roff_escape(args)}"'
        lines += [".TP", line, roff_text(summary)]
    return "\n".join(lines)


def render_pgbouncer1(version: str, date: str) -> str:
    text = _template("pgbouncer.1.in")
    text = text.replace("@DATE@", date).replace("@VERSION@", roff_escape(version))
    return text.replace("@CONSOLE_COMMANDS@", render_console_roff())


CONSOLE_MD_HEAD = """# The admin console

<!-- Generated by man/gen_man.py from pgbouncer_py/admin/show.py and man/doc_console.py; do not edit. -->

Connecting to the database `pgbouncer` opens the console, as with PgBouncer:

```sh
psql -h 127.0.0.1 -p 6432 -U admin pgbouncer        # a user listed in admin_users or stats_users
sudo -u postgres psql -p 6432 pgbouncer            # Debian: user pgbouncer over the unix socket, no password
```

Users in `admin_users` may run every command, users in `stats_users` the `SHOW` commands (except `SHOW FDS` and
`SHOW TAKEOVER_STATE`, which serve online restarts).
The user `pgbouncer` connecting over the unix socket from the operating system user that runs the pooler is an
admin without a password. One command per query; case does not matter; `SELECT name` is another spelling of
`SHOW name`. Errors keep the session open (SQLSTATE 08P01, like PgBouncer). The columns, their order and their
types are PgBouncer 1.25's, so monitoring that reads them by name or by position keeps working. Beyond PgBouncer,
the console also answers the extended query protocol (JDBC, psycopg 3, asyncpg can read it).

Signals do what some commands do: `SIGHUP` = `RELOAD`, `SIGINT` = `SHUTDOWN WAIT_FOR_SERVERS`, `SIGTERM` =
`SHUTDOWN WAIT_FOR_CLIENTS`, `SIGQUIT` = `SHUTDOWN`, `SIGUSR1` = `PAUSE`, `SIGUSR2` = `RESUME`.

## Commands that change something

For users in `admin_users` only.

| command | what it does |
|---|---|
"""


def render_console_md() -> str:
    import doc_console as doc
    check_console(*_console_code())
    out = [CONSOLE_MD_HEAD]
    out += [f"| `{syntax}` | {_md_cell(summary)} |\n" for syntax, summary in doc.COMMANDS]
    out.append("\n## SHOW commands\n\n`SHOW HELP` lists the commands. Times are microseconds unless a column "
               "says otherwise; `avg_*` values are over the last `stats_period` (60 s by default).\n")
    for cmd, (summary, columns) in doc.SHOW.items():
        out.append(f"\n### SHOW {cmd.upper()}\n\n{summary}\n\n| column | type | meaning |\n|---|---|---|\n")
        for name, oid in doc.SHOW_COLUMNS[cmd]:
            out.append(f"| `{name}` | {TYPE_NAMES.get(oid, '')} | {_md_cell(columns[name])} |\n")
    return "".join(out)


# --- command line ----------------------------------------------------------------------------------------------
def build_date() -> str:
    """SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) for reproducible pages."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%d")


def docs() -> dict[str, str]:
    """The generated documents under docs/, by file name."""
    from pgbouncer_py.config.params import EXTENSIONS, PARAMS
    return {"config.md": render_config_md(PARAMS, extensions=EXTENSIONS), "console.md": render_console_md()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--man-dir", help="write pgbouncer.1 and pgbouncer.5 into this directory")
    ap.add_argument("--docs-dir", help="write config.md and console.md into this directory")
    args = ap.parse_args(argv)
    if not (args.man_dir or args.docs_dir):
        ap.error("nothing to do: give --man-dir and/or --docs-dir")

    import pgbouncer_py
    from pgbouncer_py.config.params import EXTENSIONS, PARAMS

    out = {}
    if args.man_dir:
        date = build_date()
        out[os.path.join(args.man_dir, "pgbouncer.5")] = render_pgbouncer5(PARAMS, pgbouncer_py.__version__, date,
                                                                     extensions=EXTENSIONS)
        out[os.path.join(args.man_dir, "pgbouncer.1")] = render_pgbouncer1(pgbouncer_py.__version__, date)
    if args.docs_dir:
        out.update({os.path.join(args.docs_dir, name): text for name, text in docs().items()})
    for path, text in out.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
