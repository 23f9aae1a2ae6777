"""Peer authentication on the unix socket: the connecting process's OS user (from its uid) must be the
database user, or be mapped to it by an auth_ident_file map."""

from __future__ import annotations

import pwd


def os_user_name(uid: int | None) -> str | None:
    """Login name of a uid, or None when the uid is unknown or has no passwd entry."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def peer_allowed(system_user: str | None, db_user: str, mapname: str | None, ident) -> bool:
    """Whether `system_user` may log in as `db_user` (directly, or through map `mapname` of `ident`)."""
    if system_user is None:
        return False
    if mapname:
        return ident is not None and ident.check(mapname, system_user, db_user)
    return system_user == db_user
