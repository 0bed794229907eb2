"""The deploy suite uses `fleet_factory` and `hello_builds` from tests/integration/conftest.py."""
