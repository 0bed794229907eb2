"""`orchestrate deploy ENV --release PATH|URL [--sha256 HEX] [--version V]`: ship a release to the app
hosts, health-gated."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli._common import AppContext, confirm_protected, env_argument, lock_wait_option, verb
from orchestrator.cli._release import release_service, render_outcome
from orchestrator.config.secrets import load_secrets
from orchestrator.errors import ExitStatus, OrchestratorError
from orchestrator.fleet.inventory import app_hosts
from orchestrator.release.service import DeployCommand, ReleaseOutcome
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
@click.option("--limit", "limit", multiple=True, metavar="HOSTS",
              help="Only these app hosts: names or globs, comma-separated or repeated (host-level strategies).")
@click.option("--check", is_flag=True,
              help="Only show what would change on each host (release, unit, env file keys, hooks); change "
                   "nothing. Exit 4 when something would change, 0 when nothing would.")
@click.option("--yes", is_flag=True, help="Deploy to a protected environment without asking.")
@lock_wait_option
@click.option("--skip-backup", is_flag=True, help="Do not back up the app hosts first (default: back up).")
@click.option("--stock-ansible", is_flag=True, hidden=True,
              help="Stock Ansible settings instead of the tuned ones (benchmarks).")
@verb
def command(app: AppContext, env_name: str, release: str, sha256: str | None, version: str | None,
            strategy: str | None, limit: tuple[str, ...], check: bool, yes: bool, lock_wait: float,
            skip_backup: bool, stock_ansible: bool) -> ExitStatus:
    """Deploy a release to ENV's app hosts with a health gate on every host.

    A host whose gate fails goes back to its previous release by itself; the rollout stops and
    every host switched in this run goes back too. Exit 0 deployed (or already current),
    3 gate failed and the previous release is restored and healthy, 1 any other failure.
    With --check: 4 something would change, 0 nothing would, 1 a host could not be checked.
    """
    loaded = app.load(env_name)
    release_path: Path | str = release if is_url(release) else Path(release)
    if not check:
        confirm_protected(app, loaded, yes, f"deploy {release_path}")
    # before asking for a vault password: no inventory, or a traffic strategy without an LB
    app_hosts(loaded)
    resolve_strategy(loaded, strategy)
    secrets = load_secrets(loaded, (lambda: click.prompt("Vault password", hide_input=True, err=True))
                           if app.interactive else None)
    argv = ["deploy", env_name, "--release", release, *(["--sha256", sha256] if sha256 else []),
            *(["--version", version] if version else []), *(["--strategy", strategy] if strategy else []),
            *(f"--limit={pattern}" for pattern in limit)]
    outcome = release_service(app, loaded).deploy(DeployCommand(
        release_path=release_path, strategy=strategy, secrets=secrets, backup=not skip_backup,
        tuned=not stock_ansible, argv=argv, lock_wait=lock_wait, limit=limit, check=check, sha256=sha256,
        version=version))
    if outcome.check is not None and outcome.check.failed:
        names = ", ".join(f"{h.name} ({h.error})" for h in outcome.check.failed)
        raise CheckIncomplete(f"could not check {names}", outcome)
    app.emit(outcome.as_dict(), lambda: render_outcome(app, outcome))
    if outcome.check is not None:
        return ExitStatus.CHANGES if outcome.check.changes else ExitStatus.OK
    return ExitStatus.OK


class CheckIncomplete(OrchestratorError):
    """`deploy --check` could not check some hosts (exit 1); carries what it found on the others."""

    def __init__(self, message: str, result: ReleaseOutcome) -> None:
        super().__init__(message)
        self.result = result
