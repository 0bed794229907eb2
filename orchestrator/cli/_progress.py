"""Live progress of long work on stderr: rich progress bars on a terminal, plain lines otherwise.

- hosts of a playbook run (deploy, rollback, backup, up): a bar of the hosts done and the batch,
  and each host's current task;
- terraform (plan, apply, destroy): a bar of the resources done and each resource in progress;
- traffic gates (canary by weight, blue-green): a bar of the steps with the weight and the gate's
  values;
- the local hosts' image build: a spinner with debootstrap's current phase.

`-q/--quiet` shows none of it (errors still show), `-v/--verbose` also shows what is usually left
out (skipped tasks, terraform's progress ticks). Under --json stdout carries only the JSON; the
bars, like every progress message, go to stderr. A live display is stopped at the verb boundary
(`AppContext.on_exit`), also when the verb fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.cli._common import AppContext
from orchestrator.release.results import CLEANUP_TASK, RELEASE_TASK

if TYPE_CHECKING:  # types only: loading terraform's adapter or the traffic gates costs every verb
    from orchestrator.tools.ansible import HostEvent
    from orchestrator.tools.terraform import ProgressEvent
    from orchestrator.traffic.gates import GateDecision

_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red", "skipped": "dim"}
_VERBS = {"create": "creating", "update": "updating", "delete": "destroying", "replace": "replacing",
          "read": "reading", "noop": "unchanged"}
_DONE = {"create": "created", "update": "updated", "delete": "destroyed", "replace": "replaced", "read": "read"}


def live(app: AppContext) -> bool:
    """Whether progress is drawn as live bars (stderr is a terminal, not quiet)."""
    return app.stderr.is_terminal and not app.quiet


def _bars(app: AppContext) -> Progress:
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=app.stderr, transient=False)
    app.on_exit(progress.stop)
    return progress


class HostProgress:
    """A playbook run's progress per host: `title` (deploy, rollback, ...) over `hosts` (None: unknown).

    A host is done when its release task (the health-gated switch) finished, or when it failed.
    A new batch begins when a host not seen yet starts while every host seen so far is done, as
    Ansible's `serial` batches do.
    """

    def __init__(self, app: AppContext, title: str, hosts: Sequence[str] | None = None,
                 done_task: str = RELEASE_TASK) -> None:
        self.app = app
        self.title = title
        self.done_task = done_task
        self.expected = list(hosts) if hosts is not None else None
        self.seen: dict[str, TaskID] = {}
        self.done: set[str] = set()
        self.batch = 0
        self.progress: Progress | None = None
        self.overall: TaskID | None = None

    def __call__(self, event: HostEvent) -> None:
        if self.app.quiet:
            return
        if not live(self.app):
            self._line(event)
            return
        if self.progress is None:
            self.progress = _bars(self.app)
            self.progress.start()
            total = len(self.expected) if self.expected is not None else None
            self.overall = self.progress.add_task(self.title, total=total)
        progress, overall = self.progress, self.overall
        assert overall is not None
        if event.host not in self.seen:
            if not self.seen or set(self.seen) <= self.done:
                self.batch += 1
            self.seen[event.host] = progress.add_task("", total=1)
            if self.expected is None:
                progress.update(overall, total=len(self.seen))
        style = _STYLE.get(event.status, "white")
        detail = f" [dim]{escape(event.message)}[/dim]" if event.message and self.app.verbose else ""
        if event.status != "skipped" or self.app.verbose:
            progress.update(self.seen[event.host], description=f"  {escape(event.host)} [{style}]{event.status}"
                                                               f"[/{style}] {escape(event.task)}{detail}")
        finished = event.task == self.done_task and event.status in {"ok", "changed", "failed", "unreachable"}
        if (finished or event.status in {"failed", "unreachable"}) and event.host not in self.done:
            self.done.add(event.host)
            progress.update(self.seen[event.host], completed=1)
        if event.status in {"failed", "unreachable"}:
            self.app.stderr.print(f"  [red]{escape(event.host)}: {escape(event.task)}: {escape(event.message)}[/red]")
        progress.update(overall, completed=len(self.done),
                        description=f"{self.title}: batch {self.batch}" if self.batch > 1 else self.title)

    def _line(self, event: HostEvent) -> None:
        if event.status == "skipped" and not self.app.verbose:
            return
        if event.task == CLEANUP_TASK and event.status == "ok" and not self.app.verbose:
            return
        style = _STYLE.get(event.status, "white")
        detail = f" [dim]{escape(event.message)}[/dim]" if event.message else ""
        self.app.stderr.print(f"  {escape(event.host):<14} [{style}]{event.status:<11}[/{style}] "
                              f"{escape(event.task)}{detail}")


class TerraformProgress:
    """Terraform's resources as they are worked on: one line each (plain) or a bar of the resources
    done and a spinner per resource in progress (live)."""

    def __init__(self, app: AppContext) -> None:
        self.app = app
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.resources: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if self.app.json_output or self.app.quiet:
            return
        if not live(self.app):
            self._line(event)
            return
        if event.phase == "drift":
            self.app.stderr.print(f"  [yellow]{escape(event.address)}: changed outside Terraform[/yellow]")
            return
        if event.phase not in ("start", "progress", "complete", "errored"):
            return
        if self.progress is None:
            self.progress = _bars(self.app)
            self.progress.start()
            self.overall = self.progress.add_task("terraform: resources", total=0)
        progress, overall = self.progress, self.overall
        assert overall is not None
        address = escape(event.address)
        elapsed = f" ({event.elapsed:.0f}s)" if event.elapsed is not None else ""
        if event.address not in self.resources:
            self.resources[event.address] = progress.add_task(f"  {address}", total=1)
            progress.update(overall, total=len(self.resources))
        task = self.resources[event.address]
        if event.phase in ("start", "progress"):
            progress.update(task, description=f"  {address}: {_VERBS.get(event.action, event.action)}{elapsed}")
        elif event.phase == "complete":
            progress.update(task, completed=1,
                            description=f"  [green]{address}: {_DONE.get(event.action, event.action)}{elapsed}[/green]")
        elif event.phase == "errored":
            progress.update(task, completed=1, description=f"  [red]{address}: {event.action} failed{elapsed}[/red]")
        progress.update(overall, completed=sum(1 for t in progress.tasks if t.id != overall and t.finished))

    def _line(self, event: ProgressEvent) -> None:
        elapsed = f" ({event.elapsed:.0f}s)" if event.elapsed is not None else ""
        # addresses carry brackets (aws_instance.app[0], ["key"]): never rich markup
        address = escape(event.address)
        if event.phase == "start":
            self.app.stderr.print(f"  {address}: {_VERBS.get(event.action, event.action)}…")
        elif event.phase == "progress":
            if self.app.verbose:
                self.app.stderr.print(f"  {address}: still {_VERBS.get(event.action, event.action)}{elapsed}",
                                      style="dim")
        elif event.phase == "complete":
            self.app.stderr.print(f"  [green]{address}: {_DONE.get(event.action, event.action)}{elapsed}[/green]")
        elif event.phase == "errored":
            self.app.stderr.print(f"  [red]{address}: {event.action} failed{elapsed}[/red]")
        elif event.phase == "drift":
            self.app.stderr.print(f"  [yellow]{address}: changed outside Terraform[/yellow]")


class GateProgress:
    """The traffic steps of a release: the weight the new colour has and what its gate measured."""

    def __init__(self, app: AppContext, steps: Sequence[int]) -> None:
        self.app = app
        self.steps = list(steps)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.count = 0

    def __call__(self, decision: GateDecision) -> None:
        line = (f"gate at {decision.step}%: {'go' if decision.go else 'roll back'} ({decision.requests} requests, "
                f"{decision.failed} failed, error ratio {decision.error_ratio:.3f}, {decision.latency_ms:.0f} ms; "
                f"{decision.reason}; {decision.source})")
        if self.app.quiet:
            return
        if not live(self.app):
            self.app.info(f"  {escape(line)}")
            return
        if self.progress is None:
            self.progress = _bars(self.app)
            self.progress.start()
            self.task = self.progress.add_task("traffic", total=len(self.steps) or None)
        assert self.task is not None
        self.count += 1
        style = "green" if decision.go else "red"
        self.progress.update(self.task, completed=min(self.count, len(self.steps) or self.count),
                             description=f"traffic: new colour at [bold]{decision.step}%[/bold]")
        self.progress.console.print(f"  [{style}]{escape(line)}[/{style}]")


class StepProgress:
    """One long piece of work with changing phases (the image build): a spinner with the phase."""

    def __init__(self, app: AppContext, title: str) -> None:
        self.app = app
        self.title = title
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, phase: str) -> None:
        if self.app.quiet:
            return
        if not live(self.app):
            self.app.info(f"  {self.title}: {escape(phase)}")
            return
        if self.progress is None:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=self.app.stderr, transient=True)
            self.app.on_exit(self.progress.stop)
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=None)
        assert self.task is not None
        self.progress.update(self.task, description=f"{self.title}: {escape(phase)}")
