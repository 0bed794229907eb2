"""`orchestrate deploy ENV --release PATH|URL [--sha256 HEX] [--version V]`: ship a release to the app
hosts, health-gated."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli._common import AppContext, env_argument, lock_wait_option, verb
from orchestrator.cli._release import confirm_protected, release_service, render_outcome
from orchestrator.config.secrets import load_secrets
from orchestrator.errors import ExitStatus
from orchestrator.fleet.inventory import app_hosts
from orchestrator.release.service import DeployCommand
from orchestrator.release.strategies import resolve_strategy
from orchestrator.tools.download import is_url

STRATEGIES = ["rolling", "canary", "canary-hosts", "canary-traffic", "blue-green"]


@click.command("deploy")
@env_argument
@click.option("--release", "release", required=True, metavar="PATH|URL",
              help="A built binary, a cargo project directory (tested and built first), a .tar.gz bundle whose "
                   "top level holds the executable and its files, or an https://, http:// or s3:// URL of a "
                   "binary or bundle (with --sha256).")
@click.option("--sha256", default=None, metavar="HEX",
              help="sha256 of the release file: required for a URL (a mismatch refuses the release before any "
                   "host changes), checked for a local file.")
@click.option("--version", "version", default=None, metavar="VERSION",
              help="The release's version (default: the bundle's VERSION file, else what `BINARY --version` "
                   "prints, else 0.0.0).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="Rollout strategy (default: the environment's rollout.strategy). canary: by traffic weight "
                   "when ENV has a load balancer (as canary-traffic), else canary hosts first (as canary-hosts); "
                   "blue-green and canary-traffic move traffic on the load balancer.")
@click.option("--yes", is_flag=True, help="Deploy to a protected environment without asking.")
@lock_wait_option
@click.option("--skip-backup", is_flag=True, help="Do not back up the app hosts first (default: back up).")
@click.option("--stock-ansible", is_flag=True, hidden=True,
              help="Stock Ansible settings instead of the tuned ones (benchmarks).")
@verb
def command(app: AppContext, env_name: str, release: str, sha256: str | None, version: str | None,
            strategy: str | None, yes: bool, lock_wait: float, skip_backup: bool, stock_ansible: bool) -> ExitStatus:
    """Deploy a release to ENV's app hosts with a health gate on every host.

    A host whose gate fails goes back to its previous release by itself; the rollout stops and
    every host switched in this run goes back too. Exit 0 deployed (or already current),
    3 gate failed and the previous release is restored and healthy, 1 any other failure.
    """
    loaded = app.load(env_name)
    release_path: Path | str = release if is_url(release) else Path(release)
    confirm_protected(app, loaded, yes, f"deploy {release_path}")
    # before asking for a vault password: no inventory, or a traffic strategy without an LB
    app_hosts(loaded)
    resolve_strategy(loaded, strategy)
    secrets = load_secrets(loaded, (lambda: click.prompt("Vault password", hide_input=True, err=True))
                           if app.interactive else None)
    argv = ["deploy", env_name, "--release", release, *(["--sha256", sha256] if sha256 else []),
            *(["--version", version] if version else []), *(["--strategy", strategy] if strategy else [])]
    outcome = release_service(app, loaded).deploy(DeployCommand(
        release_path=release_path, strategy=strategy, secrets=secrets, backup=not skip_backup,
        tuned=not stock_ansible, argv=argv, lock_wait=lock_wait, sha256=sha256, version=version))
    app.emit(outcome.as_dict(), lambda: render_outcome(app, outcome))
    return ExitStatus.OK
