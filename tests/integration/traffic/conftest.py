"""Fixtures of the traffic tests: builds of the example service and one fleet with an LB host.

`traffic_builds` (once per session): v1, v2, v3 and a `flaky` release (tests/support/builds.py).
`traffic_fleet`: 3 app hosts + 1 lb host with TRAFFIC_OVERRIDES (tests/support/fleet.py), shared
by the tests of a module in order (each test starts from the traffic split the previous one left,
as an operator's environment would).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.builds import TrafficBuilds, build_traffic
from tests.support.fleet import TRAFFIC_OVERRIDES, FleetEnv


@pytest.fixture(scope="session")
def traffic_builds(tmp_path_factory: pytest.TempPathFactory) -> TrafficBuilds:
    return build_traffic(tmp_path_factory.mktemp("traffic-builds"))


@pytest.fixture(scope="module")
def traffic_fleet(session_fleet_factory: Any) -> Iterator[FleetEnv]:
    yield session_fleet_factory(app_count=3, lb_count=1, overrides=TRAFFIC_OVERRIDES)
