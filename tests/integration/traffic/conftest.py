"""Fixtures of the traffic tests: builds of the example service and one fleet with an LB host.

Builds (once per session, each a copy of examples/hello-service with its own target/):
v1 0.1.0, v2 0.2.0, v3 0.3.0 (good releases) and `flaky` 0.4.0 built with the `flaky` feature
(30% of the requests to / answer 500, deterministically).

`traffic_fleet`: 3 app hosts + 1 lb host, shared by the tests of a module in order (each test
starts from the traffic split the previous one left, as an operator's environment would).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import run_command

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hello-service"
BINARY = Path("target") / "release" / "hello-service"

#: short gates and holds: the tests run load of ~50 requests/s through the LB
TRAFFIC_OVERRIDES: dict[str, Any] = {
    "service": {"health": {"timeout": "5s", "interval": "100ms"}},
    "rollout": {"traffic_steps": [10, 25, 50, 75, 100], "step_hold": "3s", "max_error_ratio": 0.05,
                "max_latency": "500ms"},
}


@dataclass(frozen=True)
class TrafficBuilds:
    v1: Path
    v2: Path
    v3: Path
    flaky: Path


def _build(base: Path, name: str, version: str, *features: str) -> Path:
    dest = base / name
    dest.mkdir(parents=True)
    for part in ("Cargo.toml", "Cargo.lock", "src"):
        source = EXAMPLE / part
        if source.is_dir():
            shutil.copytree(source, dest / part)
        else:
            shutil.copy2(source, dest / part)
    if version != "0.1.0":
        for path in (dest / "Cargo.toml", dest / "Cargo.lock"):
            path.write_text(path.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
    argv = [str(find_cargo()), "build", "--release", "--offline", "--manifest-path", str(dest / "Cargo.toml")]
    if features:
        argv += ["--features", ",".join(features)]
    run_command(argv, cwd=dest, timeout=1200)
    return dest / BINARY


@pytest.fixture(scope="session")
def traffic_builds(tmp_path_factory: pytest.TempPathFactory) -> TrafficBuilds:
    base = tmp_path_factory.mktemp("traffic-builds")
    return TrafficBuilds(v1=_build(base, "v1", "0.1.0"), v2=_build(base, "v2", "0.2.0"),
                         v3=_build(base, "v3", "0.3.0"), flaky=_build(base, "flaky", "0.4.0", "flaky"))


@pytest.fixture(scope="module")
def traffic_fleet(session_fleet_factory: Any) -> Iterator[Any]:
    yield session_fleet_factory(app_count=3, lb_count=1, overrides=TRAFFIC_OVERRIDES)
