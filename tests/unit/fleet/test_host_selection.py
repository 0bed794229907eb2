"""Choosing hosts by name, glob and group (orchestrator.fleet.select)."""

from __future__ import annotations

import pytest

from orchestrator.errors import UsageError
from orchestrator.fleet.inventory import Host
from orchestrator.fleet.select import ansible_limit, match_hosts, select_hosts, split_patterns

HOSTS = [
    Host("dev-app-1", "10.0.0.10", ("app",)), Host("dev-app-2", "10.0.0.11", ("app",)),
    Host("dev-app-3", "10.0.0.12", ("app",)), Host("dev-mon-1", "10.0.0.13", ("monitoring",)),
    Host("dev-lb-1", "10.0.0.14", ("lb",)),
]


def names(hosts: list[Host]) -> list[str]:
    return [h.name for h in hosts]


def test_no_pattern_and_no_group_means_the_app_hosts() -> None:
    assert names(select_hosts(HOSTS)) == ["dev-app-1", "dev-app-2", "dev-app-3"]


def test_a_group_selects_its_hosts() -> None:
    assert names(select_hosts(HOSTS, group="lb")) == ["dev-lb-1"]
    assert names(select_hosts(HOSTS, group="monitoring")) == ["dev-mon-1"]


def test_names_and_globs_keep_inventory_order_without_duplicates() -> None:
    assert names(select_hosts(HOSTS, ["dev-app-3", "dev-app-*"])) == ["dev-app-1", "dev-app-2", "dev-app-3"]
    assert names(select_hosts(HOSTS, ["dev-app-[13]"])) == ["dev-app-1", "dev-app-3"]
    # a named host of another group is allowed when no group is given
    assert names(select_hosts(HOSTS, ["dev-lb-1", "dev-app-2"])) == ["dev-app-2", "dev-lb-1"]


def test_commas_separate_patterns_like_separate_words() -> None:
    assert split_patterns(["a,b", " c ", ",,"]) == ["a", "b", "c"]
    assert names(select_hosts(HOSTS, ["dev-app-1,dev-app-2"])) == ["dev-app-1", "dev-app-2"]


def test_a_pattern_that_matches_nothing_is_refused_naming_the_hosts() -> None:
    with pytest.raises(UsageError, match=r"'dev-app-9' is not an? host .*dev-app-1, dev-app-2"):
        select_hosts(HOSTS, ["dev-app-9"])
    with pytest.raises(UsageError, match="'web-\\*' matches no host"):
        select_hosts(HOSTS, ["web-*"])
    # within a group, a host of another group is not there
    with pytest.raises(UsageError, match="lb host"):
        select_hosts(HOSTS, ["dev-app-1"], group="lb")


def test_an_unknown_group_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="not one of app, lb, monitoring"):
        select_hosts(HOSTS, group="db")


def test_match_hosts_and_the_ansible_limit() -> None:
    apps = [h for h in HOSTS if "app" in h.groups]
    chosen = match_hosts(apps, ["dev-app-2"], what="app host")
    assert ansible_limit(chosen) == "dev-app-2"
    with pytest.raises(UsageError, match="app host"):
        match_hosts(apps, ["dev-lb-1"], what="app host")
