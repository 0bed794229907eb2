"""What every verb shares: the application context, `--json`, output and error mapping.

Only the cli package prints or exits. Core code raises OrchestratorError subclasses; the
`verb` decorator maps them to the exit codes of orchestrator.errors.ExitStatus and shows a
traceback only with `--debug`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem
from rich.console import Console
from rich.table import Table

from orchestrator.cli._tables import print_table
from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ExitStatus, OrchestratorError, UsageError
from orchestrator.runs.lock import DEFAULT_LOCK_WAIT

F = TypeVar("F", bound=Callable[..., Any])

PROJECT_DIR_ENV = "ORCHESTRATE_PROJECT_DIR"


@dataclass
class AppContext:
    """Options given before the verb."""

    project_dir: Path
    debug: bool = False
    json_output: bool = False
    # emoji off: a name like `db:fire:` in an environment file or a host's answer is printed as
    # written, never turned into a picture
    stderr: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True,
                                                            emoji=False))
    stdout: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True, emoji=False))
    result_renderer: Callable[[Any], None] | None = None
    """Shows the result an error carries (e.g. the hosts of a failed deploy) in human output."""
    verbosity: int = 0
    """-1 with -q/--quiet (no progress, no info), 0 by default, 1 with -v/--verbose (everything)."""
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    @property
    def verbose(self) -> bool:
        return self.verbosity > 0

    def on_exit(self, close: Callable[[], None]) -> None:
        """Call `close` when the verb ends, whichever way (stops live progress displays)."""
        self.closers.append(close)

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()

    @property
    def project(self) -> Project:
        return Project(self.project_dir)

    def load(self, env_name: str) -> LoadedEnvironment:
        return self.project.load(env_name)

    def info(self, message: str) -> None:
        """A progress or status message on stderr (also under --json: stdout carries only JSON);
        nothing with -q/--quiet."""
        if not self.quiet:
            self.stderr.print(message)

    def emit(self, data: Any, human: Callable[[], None] | None = None) -> None:
        """The verb's result: JSON on stdout under --json, else the human rendering (after any live
        progress display has stopped)."""
        self.close()
        if self.json_output:
            click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        elif human is not None:
            human()

    def stdout_print(self, renderable: Any) -> None:
        """Human result output (tables, paths) on stdout; a table as `print_table` shows it."""
        if isinstance(renderable, Table):
            self.print_table(renderable)
        else:
            self.stdout.print(renderable)

    def print_table(self, table: Table, *, err: bool = False) -> None:
        """A table on stdout (stderr with `err`): rich on a terminal wide enough to show every
        identifier whole, else one tab-separated line per row (orchestrator.cli._tables)."""
        print_table(self.stderr if err else self.stdout, table, title_to=self.stderr)

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and not self.json_output


def default_project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or Path.cwd())


def pass_app(func: F) -> F:
    """Give the verb the AppContext as its first argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.find_object(AppContext)
        assert app is not None, "the orchestrate group creates the AppContext"
        return func(app, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "json_output", is_flag=True, help="Machine-readable output on stdout.")

lock_wait_option = click.option(
    "--lock-wait", type=click.FloatRange(min=0), default=DEFAULT_LOCK_WAIT, show_default=True, metavar="SECONDS",
    help="Wait this long for the environment lock, showing who holds it (0: exit 75 at once when busy).")


def verb(func: F) -> F:
    """Map errors raised by a verb to exit codes; add `--json` after the verb.

    The decorated function receives the AppContext first and returns an exit status
    (or None for success).
    """

    @json_option
    @functools.wraps(func)
    def wrapper(*args: Any, json_output: bool = False, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        app = ctx.find_object(AppContext)
        assert app is not None
        app.json_output = json_output
        try:
            try:
                status = func(app, *args, **kwargs)
            finally:
                app.close()
        except OrchestratorError as exc:
            _report(app, exc, exc.exit_status)
            ctx.exit(int(exc.exit_status))
        except KeyboardInterrupt as exc:
            _report_interrupt(app, exc)
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # the boundary: anything unexpected is a bug report
            if app.debug:
                traceback.print_exc()
            else:
                click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True)
            if app.json_output:
                click.echo(json.dumps({"error": f"{type(exc).__name__}: {exc}", "exit_code": 1}))
            ctx.exit(int(ExitStatus.FAILED))
        ctx.exit(int(status if status is not None else ExitStatus.OK))

    return wrapper  # type: ignore[return-value]


def _report(app: AppContext, exc: OrchestratorError, status: ExitStatus) -> None:
    """One error, once: its result (when it carries one, e.g. the hosts of a failed deploy) on
    stdout, then `error: MESSAGE` and the hint on stderr; under --json one object on stdout."""
    if app.debug:
        traceback.print_exc()
    result = getattr(exc, "result", None)
    as_dict = getattr(result, "as_dict", None)
    if not app.json_output and result is not None and app.result_renderer is not None:
        app.result_renderer(result)
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(exc.hint, err=True)
    output_tail = getattr(exc, "output_tail", "")
    if output_tail and app.debug:
        click.echo(output_tail, err=True)
    if app.json_output:
        if callable(as_dict):  # the result's shape, as on success, with the error added
            click.echo(json.dumps({**as_dict(), "error": exc.message, "exit_code": int(status)}, indent=2, default=str))
        else:
            click.echo(json.dumps({"error": exc.message, "exit_code": int(status)}))


def _report_interrupt(app: AppContext, exc: KeyboardInterrupt) -> None:
    """Ctrl-C (or SIGTERM during a playbook): what the interrupted work had done, as for an error,
    then `interrupted: WHAT` on stderr; under --json one object on stdout."""
    if app.debug:
        traceback.print_exc()
    message = str(exc)
    result = getattr(exc, "result", None)
    as_dict = getattr(result, "as_dict", None)
    if not app.json_output and result is not None and app.result_renderer is not None:
        app.result_renderer(result)
    click.echo(f"interrupted: {message}" if message else "interrupted", err=True)
    if app.json_output:
        data = as_dict() if callable(as_dict) else {}
        click.echo(json.dumps({**data, "error": f"interrupted: {message}" if message else "interrupted",
                               "exit_code": int(ExitStatus.INTERRUPTED)}, indent=2, default=str))


def _project_dir_of(ctx: click.Context) -> Path:
    given = ctx.find_root().params.get("project_dir")
    return Path(given or default_project_dir()).resolve()


def complete_env(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of ENV: the project's environment names."""
    try:
        names = Project(_project_dir_of(ctx)).environment_names()
    except OSError:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_host(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of HOST: the hosts of ENV's inventory (none before provisioning)."""
    from orchestrator.fleet.inventory import hosts_from_inventory, load_inventory
    from orchestrator.paths import EnvPaths

    env_name = ctx.params.get("env_name")
    if not env_name:
        return []
    try:
        hosts = hosts_from_inventory(load_inventory(EnvPaths(_project_dir_of(ctx), str(env_name)).inventory))
    except (OSError, ValueError):
        return []
    return [CompletionItem(h.name) for h in hosts if h.name.startswith(incomplete)]


def env_argument(func: F) -> F:
    return click.argument("env_name", metavar="ENV", shell_complete=complete_env)(func)


def confirm_protected(app: AppContext, loaded: LoadedEnvironment, yes: bool, what: str) -> None:
    """A protected environment needs --yes without a terminal, or a confirmation with one."""
    if not loaded.env.protected or yes:
        return
    if not app.interactive:
        raise UsageError(f"{loaded.name} is protected: pass --yes to {what} without a terminal")
    click.confirm(f"{what.capitalize()} in protected environment {loaded.name}?", abort=True, err=True)
