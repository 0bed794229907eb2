"""Fixtures for integration tests that need real local hosts (systemd-nspawn, booted through
orchestrator.fleet.local — the Python API, not terraform, because it is faster) and builds of the
example service. The work is done in tests/support/fleet.py and tests/support/builds.py.

    @pytest.mark.integration
    @pytest.mark.hosts
    def test_something(fleet_factory):
        fleet = fleet_factory(app_count=2, monitoring_count=1)
        fleet.ssh(fleet.hosts[0], "systemctl is-system-running")
        run ansible with `-i fleet.inventory` (user root, the project's key, per-env known_hosts)

`fleet_factory(app_count=1, monitoring_count=0, lb_count=0, env="dev", overrides=None) -> FleetEnv`
boots a unique fleet for one test; `session_fleet_factory` the same for the session (read-only
tests share its hosts). `unbooted_project(...)` and `module_unbooted_project(...)` write the
unique fleet into a copied project without booting it (for tests that provision through
terraform) and destroy whatever hosts it got. All of them need root (skipped otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.builds import Builds, build_hello
from tests.support.fleet import MakeFleet, fleets


@pytest.fixture
def fleet_factory() -> Iterator[MakeFleet]:
    """Boot a unique local fleet: `fleet_factory(app_count=1, monitoring_count=0, lb_count=0,
    env="dev", overrides=None) -> FleetEnv`. Destroyed at the end of the test."""
    with fleets("fleet") as factory:
        yield factory.boot


@pytest.fixture(scope="session")
def session_fleet_factory() -> Iterator[MakeFleet]:
    """Like fleet_factory, but the fleets live until the end of the session (share read-only)."""
    with fleets("session") as factory:
        yield factory.boot


@pytest.fixture(scope="module")
def module_unbooted_project() -> Iterator[MakeFleet]:
    """Like `unbooted_project`, shared by the tests of one module (they run in file order)."""
    with fleets("module") as factory:
        yield factory.prepare


@pytest.fixture
def unbooted_project() -> Iterator[MakeFleet]:
    """A copied project with a unique fleet written into its env file, nothing booted:
    `unbooted_project(app_count=..., ...) -> FleetEnv`. Hosts it gets (e.g. through
    `orchestrate provision`) are destroyed at the end of the test."""
    with fleets("project") as factory:
        yield factory.prepare


@pytest.fixture(scope="session")
def hello_builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Builds of the example service: v1, v2, broken (and untested, not built); see tests/support/builds.py."""
    return build_hello(tmp_path_factory.mktemp("hello-builds"))
