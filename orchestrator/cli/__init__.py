"""The `orchestrate` command line: one module per verb.

Every module in this package whose name does not start with `_` is a verb module and
exposes `command` (a click command or group); they are registered here in name order.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
from pathlib import Path

import click

from orchestrator import __version__
from orchestrator.cli._common import PROJECT_DIR_ENV, AppContext, default_project_dir


class _VerbGroup(click.Group):
    """A group that imports a verb's module only when that verb is asked for.

    `orchestrate plan` then does not pay for importing ansible, the heal server and the other
    verbs' dependencies (~1 s on this machine; the plan-overhead benchmark measures it).
    Listing (`--help`) still imports every verb module.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_verbs()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            _register_verb(cmd_name.replace("-", "_"))
        if cmd_name not in self.commands:  # a verb whose module is named differently
            _register_verbs()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_VerbGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="orchestrate")
@click.option("--debug", is_flag=True, help="Show tracebacks and command output tails on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no status messages on stderr (errors still show).")
@click.option("-v", "--verbose", is_flag=True, help="Show every step of the progress (skipped tasks, waits).")
@click.option(
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Project directory (default: ${PROJECT_DIR_ENV} or the current directory).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool, project_dir: Path | None) -> None:
    """Render, provision, deploy and heal a Rust service on a fleet.

    Every verb takes --json for machine-readable output on stdout; progress goes to stderr (live
    bars on a terminal). Exit codes: 0 done, 1 failed, 2 bad input, 3 rolled back, 4 changes found,
    75 environment lock busy, 130 interrupted.

    Shell completion (bash): eval "$(_ORCHESTRATE_COMPLETE=bash_source orchestrate)"
    """
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other")
    ctx.obj = AppContext(project_dir=(project_dir or default_project_dir()).resolve(), debug=debug,
                         verbosity=-1 if quiet else 1 if verbose else 0)


def _register_verbs() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        _register_verb(info.name)


def _register_verb(module_name: str) -> None:
    """Import verb module `module_name` (if there is one) and register its `command`."""
    if module_name.startswith("_") or not any(info.name == module_name for info in pkgutil.iter_modules(__path__)):
        return
    module = importlib.import_module(f"{__name__}.{module_name}")
    command = getattr(module, "command", None)
    if isinstance(command, click.Command):
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    # What the modules and the command built lives until the process ends: frozen, the cyclic
    # collector never walks it again, neither during the command nor in the interpreter's last
    # collections at exit (those cost ~0.1 s of every command over a heap of this size). Objects
    # are still released as their last reference goes; what a reference cycle holds at exit ends
    # with the process (the commands close what they write and commit the journal before they return).
    gc.freeze()
    try:
        cli(prog_name="orchestrate")
    finally:
        gc.freeze()
