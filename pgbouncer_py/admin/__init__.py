"""The admin console (the 'pgbouncer' database): parse.py -> console.py (session) -> commands.py (static tables) ->
show.py, control.py, fds.py; extended.py adds the extended query protocol."""
