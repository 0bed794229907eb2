"""Ansible's own output, plus one JSON line per event on a pipe of orchestrate's.

ansible-playbook loads this as its stdout callback (orchestrator/tools/runner_pipe.py names it and
this directory). What Ansible prints is its default callback's, unchanged. Each event orchestrate
follows (the playbook, play and task starts, every host's result, the final stats) is also written
as one line of JSON to the file descriptor in ORCHESTRATE_EVENTS_FD, in the shape of
ansible-runner's job events (`event`, `uuid`, `created`, `event_data` with `host`, `task`,
`task_action`, `res`, ...), flushed at once, so results arrive while the run goes on.

It costs the run little: one `json.dumps` per event. Results Ansible marks no_log are replaced by
the `censored` message before they are written, and a vault-encrypted value is written as its
ciphertext, never decrypted. Without ORCHESTRATE_EVENTS_FD it is Ansible's default callback.

This file is loaded by Ansible's plugin loader, not imported by orchestrate: it needs only
ansible-core and the standard library.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Mapping, Set
from typing import Any

from ansible.plugins.loader import callback_loader  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: orchestrate_events
    type: stdout
    short_description: Ansible's default output, and each event as a JSON line on a pipe
    description:
      - Prints what the default callback prints and writes one JSON object per event to the file
        descriptor named by the ORCHESTRATE_EVENTS_FD environment variable.
    extends_documentation_fragment:
      - default_callback
      - result_format_callback
"""

#: environment variable naming the (inherited) file descriptor the events are written to
EVENTS_FD_ENV = "ORCHESTRATE_EVENTS_FD"

#: what a no_log result is replaced with (ansible-runner's words)
CENSORED = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"

_Default: Any = callback_loader.get("default", class_only=True)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _plain(value: Any) -> Any:
    """What json.dumps cannot write itself, as data (its `default`)."""
    ciphertext = getattr(value, "_ciphertext", None)
    if ciphertext is not None:  # a vault-encrypted value: never its plaintext
        return {"__ansible_vault": ciphertext.decode() if isinstance(ciphertext, bytes) else str(ciphertext)}
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (Set, tuple)):
        return list(value)
    return str(value)


def _censored(res: Any) -> Any:
    """`res` with what Ansible marks no_log replaced by the CENSORED message (as ansible-runner does)."""
    if not isinstance(res, Mapping):
        return res
    if res.get("_ansible_no_log"):
        return {"censored": CENSORED}
    items = res.get("results")
    if isinstance(items, list) and any(isinstance(i, Mapping) and i.get("_ansible_no_log") for i in items):
        res = dict(res)
        res["results"] = [{"censored": CENSORED} if isinstance(i, Mapping) and i.get("_ansible_no_log") else i
                          for i in items]
    return res


def encode(record: dict[str, Any]) -> str:
    """`record` as one line of JSON. Keys JSON cannot have are left out; a result that still cannot
    be written (a value that contains itself) is replaced by a message saying so."""
    try:
        return json.dumps(record, default=_plain, skipkeys=True)
    except (TypeError, ValueError):
        data = dict(record.get("event_data") or {})
        data["res"] = {"msg": "(this result could not be written as JSON)"}
        return json.dumps({**record, "event_data": data}, default=_plain, skipkeys=True)


class CallbackModule(_Default):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "orchestrate_events"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events: Any = None
        fd = os.environ.get(EVENTS_FD_ENV, "")
        if fd.isdigit():
            try:
                os.set_inheritable(int(fd), False)  # no program Ansible starts keeps the pipe open
                self._events = os.fdopen(int(fd), "w", encoding="utf-8", buffering=1 << 16)
            except OSError:  # not open in this process: Ansible's own output only
                self._events = None
        self._context: dict[str, Any] = {}
        self._started: dict[tuple[str, str], datetime.datetime] = {}

    # --- writing ---------------------------------------------------------------------------------

    def _emit(self, event: str, **data: Any) -> None:
        if self._events is None:
            return
        record = {"event": event, "uuid": str(uuid.uuid4()), "created": _now().isoformat(), "pid": os.getpid(),
                  "event_data": {**self._context, **data}}
        try:
            self._events.write(encode(record) + "\n")
            self._events.flush()
        except OSError:  # orchestrate is gone: Ansible's own output goes on
            self._events = None

    def _set_task(self, task: Any) -> None:
        self._context.update(task=task.name or task.action, task_uuid=str(task._uuid), task_action=task.action,
                             resolved_action=getattr(task, "resolved_action", None) or task.action)
        try:
            self._context["task_path"] = task.get_path()
        except AttributeError:
            self._context.pop("task_path", None)
        role = getattr(getattr(task, "_role", None), "_role_name", None)
        if role:
            self._context["role"] = role
        else:
            self._context.pop("role", None)

    def _result(self, event: str, result: Any, **extra: Any) -> None:
        host = result._host.get_name()
        task = result._task
        started = self._started.pop((host, str(task._uuid)), None)
        ended = _now()
        self._emit(event, host=host, remote_addr=result._host.address, task=task.name or task.action,
                   task_uuid=str(task._uuid), task_action=task.action,
                   resolved_action=getattr(task, "resolved_action", None) or task.action,
                   start=started.isoformat() if started else None, end=ended.isoformat(),
                   duration=(ended - started).total_seconds() if started else None, **extra)

    # --- the playbook --------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._context = {"playbook": getattr(playbook, "_file_name", "???"), "playbook_uuid": str(uuid.uuid4())}
        self._emit("playbook_on_start", uuid=self._context["playbook_uuid"])
        super().v2_playbook_on_start(playbook)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        hosts = getattr(play, "hosts", "")
        pattern = ",".join(hosts) if isinstance(hosts, list) else str(hosts or "")
        for key in ("task", "task_uuid", "task_action", "resolved_action", "task_path", "role"):
            self._context.pop(key, None)
        self._context.update(play=play.get_name().strip() or pattern, play_uuid=str(play._uuid), play_pattern=pattern)
        self._emit("playbook_on_play_start", name=self._context["play"], pattern=pattern)
        super().v2_playbook_on_play_start(play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._set_task(task)
        self._emit("playbook_on_task_start", name=task.get_name(), is_conditional=is_conditional)
        super().v2_playbook_on_task_start(task, is_conditional)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._set_task(task)
        self._emit("playbook_on_handler_task_start", name=task.get_name(), is_conditional=False)
        super().v2_playbook_on_handler_task_start(task)

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        self._emit("playbook_on_no_hosts_remaining")
        super().v2_playbook_on_no_hosts_remaining()

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for key in ("play", "play_uuid", "play_pattern", "task", "task_uuid", "task_action", "resolved_action",
                    "task_path", "role"):
            self._context.pop(key, None)
        self._emit("playbook_on_stats", changed=stats.changed, dark=stats.dark, failures=stats.failures,
                   ignored=getattr(stats, "ignored", {}), ok=stats.ok, processed=stats.processed,
                   rescued=getattr(stats, "rescued", {}), skipped=stats.skipped,
                   artifact_data=stats.custom.get("_run", {}) if hasattr(stats, "custom") else {})
        super().v2_playbook_on_stats(stats)

    # --- the hosts ---------------------------------------------------------------------------------

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._started[(host.get_name(), str(task._uuid))] = _now()
        super().v2_runner_on_start(host, task)

    def v2_runner_on_ok(self, result: Any) -> None:
        res = result._result
        if result._task.action in ("setup", "gather_facts") and isinstance(res.get("ansible_facts"), Mapping):
            # the host's environment stays out of the events (as ansible-runner leaves it out)
            res = {**res, "ansible_facts": {k: v for k, v in res["ansible_facts"].items() if k != "ansible_env"}}
        self._result("runner_on_ok", result, res=_censored(res))
        super().v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("runner_on_failed", result, res=_censored(result._result), ignore_errors=ignore_errors)
        super().v2_runner_on_failed(result, ignore_errors)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result("runner_on_skipped", result)
        super().v2_runner_on_skipped(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("runner_on_unreachable", result, res=_censored(result._result))
        super().v2_runner_on_unreachable(result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._emit("runner_item_on_ok", host=result._host.get_name(), res=_censored(result._result))
        super().v2_runner_item_on_ok(result)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._emit("runner_item_on_failed", host=result._host.get_name(), res=_censored(result._result))
        super().v2_runner_item_on_failed(result)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        self._emit("runner_item_on_skipped", host=result._host.get_name(), res=_censored(result._result))
        super().v2_runner_item_on_skipped(result)
