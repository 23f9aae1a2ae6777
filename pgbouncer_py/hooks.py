"""The few calls the core (client.py, janitor.py) makes up into the admin console, wired by main.wire_hooks() at
start-up: the core imports this module and never admin/, so imports go one way (admin -> core)."""


def _no_console(client):
    raise RuntimeError("no admin console wired (main.wire_hooks() runs at start-up)")


def _nothing(*_args) -> None:
    """Without a console nobody can PAUSE or SUSPEND: nothing to hold and no answer to progress."""


new_console = _no_console   # new_console(client) -> the console session of a client logged in to 'pgbouncer'
hold_transport = _nothing   # hold_transport(transport): SUSPEND also holds a connection accepted meanwhile
admin_tick = _nothing       # admin_tick(now): from the janitor, progress of PAUSE / SUSPEND / WAIT_CLOSE answers
