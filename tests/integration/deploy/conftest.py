"""The deploy suite uses `fleet_factory`, `module_unbooted_project` and `hello_builds` from
tests/integration/conftest.py."""
