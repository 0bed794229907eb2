"""End-to-end tests run whole `orchestrate` commands as an operator or a script would.

Their fixtures are the integration suite's (same names, same behaviour), made by tests/support:
throwaway project copies with unique bridges and subnets, and builds of the example service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.builds import Builds, build_hello
from tests.support.fleet import MakeFleet, fleets


@pytest.fixture
def unbooted_project() -> Iterator[MakeFleet]:
    """A copied project with a unique fleet written into its env file, nothing booted."""
    with fleets("project") as factory:
        yield factory.prepare


@pytest.fixture(scope="session")
def hello_builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Builds of the example service: v1, v2, broken (and untested, not built)."""
    return build_hello(tmp_path_factory.mktemp("hello-builds"))
