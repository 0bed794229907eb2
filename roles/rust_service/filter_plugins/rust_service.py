"""Filters of the rust_service role: the unit's ExecStart line and the allowed signers file.

Both call the pure functions of the role's module_utils, which the rust_release module uses
too. Ansible puts a role's module_utils on the import path of modules only (AnsiballZ), not of
controller plugins, so they are loaded here from their files.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from ansible.errors import AnsibleFilterError

_MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "module_utils")


def _load(name):
    qualified = f"_rust_service_filter_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, os.path.join(_MODULE_UTILS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[qualified] = module
    return sys.modules[qualified]


def exec_start(args, executable, port, data_dir, config_dir, release_dir, name):
    """ExecStart's value: `executable` with `args` expanded (placeholders) and quoted for systemd.

    `args` is data, never a template: only the role's placeholders are replaced.
    """
    cmdline = _load("rust_service_cmdline")
    values = {"port": port, "data_dir": data_dir, "config_dir": config_dir, "release_dir": release_dir,
              "name": name}
    try:
        argv = cmdline.expand_argv(list(args) if isinstance(args, (list, tuple)) else args, values,
                                   "rust_service_args")
        return cmdline.exec_command_line(str(executable), argv)
    except cmdline.CommandLineError as exc:
        raise AnsibleFilterError(str(exc)) from None


def binary_name(name):
    """`name` when it is a plain file name (the executable inside the release directory)."""
    cmdline = _load("rust_service_cmdline")
    try:
        cmdline.check_file_name(str(name), "rust_service_binary")
    except cmdline.CommandLineError as exc:
        raise AnsibleFilterError(str(exc)) from None
    return str(name)


def allowed_signers(public_keys):
    """The allowed_signers file (OpenSSH format) trusting `public_keys` to sign releases."""
    bundle = _load("rust_service_bundle")
    try:
        return bundle.allowed_signers(list(public_keys) if isinstance(public_keys, (list, tuple)) else public_keys)
    except ValueError as exc:
        raise AnsibleFilterError(f"rust_service_signing_public_keys: {exc}") from None


class FilterModule:
    """rust_service_exec_start, rust_service_binary_name, rust_service_allowed_signers."""

    def filters(self):
        return {
            "rust_service_exec_start": exec_start,
            "rust_service_binary_name": binary_name,
            "rust_service_allowed_signers": allowed_signers,
        }
