"""The check registry of `orchestrate verify`: every check registered, in the order they run."""

from __future__ import annotations

from orchestrator.verify.preflight import PREFLIGHT_CHECKS
from orchestrator.verify.runner import check_names


def test_every_check_is_registered_once_in_order() -> None:
    assert check_names() == ["environment", "terraform-fmt", "terraform-validate", "ansible-syntax",
                             "ansible-lint", "monitoring", "heal-policy", "checkov", "resource-graph", "deploy-model"]


def test_preflight_finds_its_checks_without_the_runner() -> None:
    import subprocess
    import sys

    # a process that imports only the pre-flight (as `up` does) must see the checks it runs
    code = ("from orchestrator.verify.core import CHECKS; import orchestrator.verify.preflight as p; "
            "print(','.join(c.name for c in CHECKS if c.name in p.PREFLIGHT_CHECKS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == list(PREFLIGHT_CHECKS)
