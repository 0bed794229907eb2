"""What a short command imports before it does anything: a rollback, a status and a deploy start
without the modules only other paths use (docs/performance.md). Each is imported in a fresh
interpreter, as `orchestrate VERB` starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: imported where they are used: a download, a webhook or a Prometheus query (urllib, http.client),
#: the signing key (cryptography), a schedule (croniter), the vault and the playbooks (ansible),
#: building, downloading or unpacking an artifact, publishing the delivery metrics
NOT_AT_START = (
    "ansible", "cryptography", "croniter", "http.client", "urllib.request", "tarfile", "tomllib",
    "orchestrator.release.artifact", "orchestrator.monitoring.delivery", "orchestrator.notify.webhooks",
    "orchestrator.fleet.aws",
)


def imported_by(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(proc.stdout))


@pytest.mark.parametrize("verb", ["rollback", "status", "deploy"])
def test_a_short_command_does_not_import_what_it_does_not_use(verb: str) -> None:
    loaded = imported_by(f"orchestrator.cli.{verb}")
    assert f"orchestrator.cli.{verb}" in loaded
    assert sorted(name for name in NOT_AT_START if name in loaded) == []
