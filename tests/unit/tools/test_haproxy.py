"""The HAProxy runtime adapter's pure parts: the helper's argv, the ssh argv, reading its JSON."""

from __future__ import annotations

import pytest

from orchestrator.tools.haproxy import HELPER, HAProxyError, control_dir, helper_argv, parse_servers, ssh_argv


def test_helper_argv_sorts_weights_into_one_argument() -> None:
    assert helper_argv("set", "hello", {"b": 0, "a": 100}) == [HELPER, "set", "--backend", "hello", "a=100,b=0"]
    assert helper_argv("state", "hello") == [HELPER, "state", "--backend", "hello"]
    with pytest.raises(ValueError, match="'drain' is not one of state, set"):
        helper_argv("drain", "hello")


def test_ssh_argv_uses_the_inventory_connection_and_one_master_connection() -> None:
    inventory = {"all": {"vars": {"ansible_user": "admin", "ansible_ssh_private_key_file": "/k/id",
                                  "ansible_ssh_common_args": "-o IdentitiesOnly=yes -o UserKnownHostsFile=/k/kh"}}}
    argv = ssh_argv(inventory, "10.0.0.5", [HELPER, "state", "--backend", "hello"], uid=1234)
    assert argv[:3] == ["ssh", "-i", "/k/id"]
    assert "UserKnownHostsFile=/k/kh" in argv and "BatchMode=yes" in argv
    assert f"ControlPath={control_dir(1234)}/tr-%C" in argv and str(control_dir(1234)) == "/tmp/orch-cp-1234"
    # the remote command is one shell-quoted argument, after the destination; a login user other
    # than root reaches the admin socket through passwordless sudo
    assert argv[-2:] == ["admin@10.0.0.5", f"sudo -n {HELPER} state --backend hello"]
    bare = ssh_argv({}, "10.0.0.6", ["true"])
    assert "-i" not in bare and bare[-2:] == ["root@10.0.0.6", "true"]


def test_the_helper_answer_is_read_into_servers() -> None:
    text = '{"servers": {"app-1": {"weight": 100, "status": "UP", "hrsp_2xx": 7}, "app-2": {"weight": 0}}}'
    assert parse_servers(text) == {"app-1": {"weight": 100, "status": "UP", "hrsp_2xx": 7}, "app-2": {"weight": 0}}
    assert parse_servers('{"servers": null}') == {}


@pytest.mark.parametrize(("text", "message"), [
    ("Permission denied", "lb-1: the helper answered no JSON: 'Permission denied'"),
    ("[1, 2]", "lb-1: the helper answered list, not a JSON object"),
    ('{"servers": [1]}', "lb-1: the helper's `servers` is list, not a mapping"),
])
def test_anything_but_the_helper_json_is_an_error_naming_the_host(text: str, message: str) -> None:
    with pytest.raises(HAProxyError) as bad:
        parse_servers(text, host="lb-1")
    assert str(bad.value).startswith(message)
