#!/usr/bin/python3
"""Write a systemd EnvironmentFile from a mapping, rendered on the host.

The file holds the service's secrets. `ansible.builtin.template` and `copy content=` render or
write their content into a temporary file in Ansible's local tmp on the controller first; this
module receives the mapping as an argument (over the pipelined connection, in memory) and writes
the file only on the host.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rust_env_file
short_description: Write a systemd EnvironmentFile (KEY="value" lines) without a copy on the controller
description:
  - Renders I(env) as sorted C(KEY="value") lines below I(header) and replaces I(path) atomically
    when the content differs. Inside the double quotes C(") C(\\) C(`) and C($) get a backslash,
    the escapes systemd's EnvironmentFile parser removes, so every value reaches the service
    byte for byte (systemd expands neither variables nor specifiers there). Booleans are
    lower-cased.
  - Keys must be variable names; a value holding a newline, carriage return or NUL is refused
    with an error naming the key (never the value).
  - Owner, group and mode are the usual file attributes; the content is never returned or diffed,
    only the names of the keys that change (also in check mode).
options:
  path:
    description: The environment file.
    type: path
    required: true
  env:
    description: Variables to write (values are strings, numbers or booleans). Treated as secret.
    type: dict
    required: true
  header:
    description: Comment lines written first (e.g. C(ansible_managed | comment)).
    type: str
    default: ""
extends_documentation_fragment: [files]
author: orchestrate
"""

RETURN = r"""
changed: {description: Whether the content or the file attributes changed, type: bool}
keys_changed: {description: "Names of the variables added, removed or changed (never values)", type: list}
"""

import os
import tempfile

try:
    from ansible.module_utils.basic import AnsibleModule
    from ansible.module_utils.rust_service_envfile import EnvFileError, keys_changed, render
except ImportError:
    # run without Ansible by `orchestrate` (orchestrator/release/direct.py), which hands the
    # role's module_utils over as top-level modules and calls run_direct()
    AnsibleModule = None
    from rust_service_envfile import EnvFileError, keys_changed, render


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "env": {"type": "dict", "required": True, "no_log": True},
            "header": {"type": "str", "default": ""},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    env = module.params["env"]
    try:
        content = render(env, module.params["header"]).encode()
    except EnvFileError as exc:
        module.fail_json(msg=f"{path}: {exc}")
    old, changed, changed_keys = write_env_file(path, env, content, module.check_mode)
    file_args = module.load_file_common_arguments(module.params)
    if old is None and module.check_mode:
        # nothing to compare attributes with before the file exists
        module.exit_json(changed=True, path=path, keys_changed=changed_keys)
    changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, path=path, keys_changed=changed_keys)


def write_env_file(path, env, content, check_mode):
    """Replace `path` with `content` when it differs: (old content or None, changed, the names of
    the variables that change)."""
    try:
        with open(path, "rb") as handle:
            old = handle.read()
    except FileNotFoundError:
        old = None
    changed = old != content
    # names only: the values are secrets
    changed_keys = keys_changed(old.decode("utf-8", "replace") if old is not None else None, env) if changed else []
    if changed and not check_mode:
        # mkstemp creates the file 0600: the content is never readable by others, not even briefly
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".env-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            # not module.atomic_move: for a new file it applies the umask's mode (0644) before
            # the file attributes below would tighten it again
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return old, changed, changed_keys


def run_direct(given, check_mode=False):
    """One call without Ansible (orchestrator/release/direct.py): the file root's, mode 0600, as
    the role's task asks; the result as a dict (`failed` set when it failed). Never the content."""
    try:
        path, env, header = given["path"], given["env"], given.get("header", "")
        if not isinstance(path, str) or not isinstance(env, dict) or not isinstance(header, str):
            raise TypeError("path and header are strings, env a mapping")
        content = render(env, header).encode()
    except (KeyError, TypeError, EnvFileError) as exc:
        return {"changed": False, "failed": True, "msg": f"{given.get('path', 'the environment file')}: {exc}"}
    old, changed, changed_keys = write_env_file(path, env, content, check_mode)
    if not check_mode and os.path.exists(path):
        stat = os.stat(path)
        if (stat.st_uid, stat.st_gid) != (0, 0):
            os.chown(path, 0, 0)
            changed = True
        if stat.st_mode & 0o7777 != 0o600:
            os.chmod(path, 0o600)
            changed = True
    return {"changed": changed, "path": path, "keys_changed": changed_keys}


if __name__ == "__main__":
    main()
