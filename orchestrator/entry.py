"""The `orchestrate` program: a command that may run a playbook starts Ansible's Python first.

`deploy` and `up` run ansible-playbook on a first deploy, a changed setup, a bundle, with
`--stock-ansible`, and for the lb and monitoring steps. Before the command line and its modules are
imported (about 0.3 s), this starts ansible-playbook's Python (tools/ansible_prestart.py), which
imports Ansible meanwhile. Every other command starts as before.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: the verbs that start ansible-playbook's Python ahead
PRESTART_VERBS = frozenset({"deploy", "up"})

#: the top-level options that take a value (orchestrator/cli/__init__.py)
_VALUE_OPTIONS = frozenset({"--project-dir"})


def verb(argv: Sequence[str]) -> str | None:
    """The verb of `orchestrate ARGV` (None: none, or help or version asked) (pure)."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUE_OPTIONS:
            next(args, None)
        elif arg in ("-h", "--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    """Console-script entry point."""
    if verb(sys.argv[1:]) in PRESTART_VERBS and not {"-h", "--help"} & set(sys.argv[2:]):
        from orchestrator.tools import ansible_prestart

        ansible_prestart.prestart()
    from orchestrator.cli import main as cli_main

    cli_main()
