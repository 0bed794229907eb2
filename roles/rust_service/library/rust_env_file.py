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
  - Renders I(env) as sorted C(KEY="value") lines (booleans lower-cased, backslashes and double
    quotes escaped) below I(header) and replaces I(path) atomically when the content differs.
  - Owner, group and mode are the usual file attributes; the content is never returned or diffed.
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
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def quote(value):
    """The value as systemd reads it from a double-quoted EnvironmentFile assignment."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(env, header):
    """The file's content (pure: unit-tested)."""
    lines = [header] if header else []
    lines += [f"{key}={quote(value)}" for key, value in sorted(env.items())]
    return "".join(line + "\n" for line in lines)


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
    content = render(module.params["env"], module.params["header"]).encode()
    try:
        with open(path, "rb") as handle:
            changed = handle.read() != content
    except FileNotFoundError:
        changed = True
    if changed and not module.check_mode:
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
    file_args = module.load_file_common_arguments(module.params)
    changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, path=path)


if __name__ == "__main__":
    main()
