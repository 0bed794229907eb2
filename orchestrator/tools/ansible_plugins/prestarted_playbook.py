"""ansible-playbook, started before orchestrate knows what it will run.

orchestrator/tools/ansible_prestart.py starts this script when a command begins that may run a
playbook. While orchestrate imports its own modules and prepares the run, this process imports the
part of Ansible that does not depend on Ansible's configuration (WARM: their imports never load
`ansible.constants`, which reads the configuration and the environment). Then it reads one request
from stdin: the command ansible-runner prepared, its environment, working directory and umask.
It takes them on as its own, gives itself /dev/null as stdin and runs ansible-playbook's `main` as
the `ansible-playbook` program would: what Ansible reads of its configuration, environment and
arguments, it reads after the request. With no request (stdin closed first) it exits with 0.

Run by path with the interpreter of the `ansible-playbook` program; it imports nothing of
orchestrate.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

#: modules ansible-playbook imports that read neither Ansible's configuration nor the environment
#: (tests/unit/tools/test_ansible_prestart.py checks it): about two thirds of its import time
WARM = (
    "ansible.config.manager", "multiprocessing.queues", "ansible._internal._ssh._ssh_agent",
    "ansible._internal._templating", "cryptography.hazmat.backends.openssl.backend",
    "ansible.parsing.utils.addresses", "packaging.specifiers", "uuid", "ansible.module_utils.compat.selinux",
    "argparse", "ctypes.util", "tarfile", "logging", "ansible._internal._errors._captured",
    "ansible.module_utils.common.sys_info", "curses", "ansible.utils.multiprocessing", "ansible.context",
    "jinja2.sandbox", "difflib",
)


def warm() -> None:
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:  # another Ansible release: it imports what it needs itself
            continue


def read_request() -> dict[str, object] | None:
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    return json.loads(b"".join(chunks)) if chunks else None


def main() -> int:
    # the modules come from where the ansible-playbook program's do, not from this script's folder
    del sys.path[0]
    warm()
    request = read_request()
    if request is None:
        return 0
    argv = [str(arg) for arg in request["argv"]]  # type: ignore[attr-defined]
    os.umask(int(request["umask"]))  # type: ignore[call-overload]
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})  # type: ignore[attr-defined]
    tempfile.tempdir = None  # TMPDIR is read again
    os.chdir(str(request["cwd"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # as the program's own script: its folder first on the path, its name as argv[0]
    sys.path.insert(0, str(Path(argv[0]).parent))
    sys.argv = [argv[0].removesuffix(".exe"), *argv[1:]]
    from ansible.cli.playbook import main as playbook  # type: ignore[import-untyped]

    return int(playbook() or 0)


if __name__ == "__main__":
    sys.exit(main())
