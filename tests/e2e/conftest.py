"""End-to-end tests run whole `orchestrate` commands as an operator or a script would.

They use the integration suite's fleet and build fixtures (tests/integration/conftest.py):
throwaway project copies with unique bridges and subnets, and builds of the example service.
"""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    hello_builds,
    unbooted_project,
)
