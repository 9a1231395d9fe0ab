"""satcheld, the Satchel server. Its rooms, each importing only those below it
(checked by import-linter, `pyproject.toml`):

    _cli, _server, _config   the `satcheld` command and the assembly
    api                      method table, guard, services, health, reflection
    auth | watch             who may do what | fan-out of commits to streams
    store                    objects, revisions, history; sealed secret data
    model                    kinds, field rules, validation, label selectors
    errors                   the domain errors every room raises

docs/architecture.md walks through them.
"""
