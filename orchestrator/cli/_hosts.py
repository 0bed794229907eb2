"""What the verbs that speak to hosts directly (logs, exec) share: lines prefixed with their host,
the prefix coloured per host on a terminal, and the `--` that separates a remote command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from rich.text import Text

#: one colour per host, in turn (rich drops them when the output is not a terminal)
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue", "red")


def host_styles(names: Sequence[str]) -> dict[str, str]:
    """A colour for each host name, stable for the order given (pure)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def prefixed(host: str, width: int, line: str, style: str | None = None, *, dim: bool = False) -> Text:
    """`HOST  line` with the host padded to `width` and styled; the line is shown as it is (no markup)."""
    text = Text(f"{host:<{width}} ", style=style or "")
    text.append(line, style="dim" if dim else "")
    return text


REMOTE_ARGV = "orchestrate.remote_argv"


class DashDashCommand(click.Command):
    """A command whose words after the first `--` are a command line of its own (ctx.meta[REMOTE_ARGV]).

    click drops the `--` itself, which would leave `exec ENV HOST uname` ambiguous; the split is
    made before click parses the rest.
    """

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "-- CMD [ARGS]..."]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            index = args.index("--")
            ctx.meta[REMOTE_ARGV] = list(args[index + 1:])
            args = args[:index]
        else:
            ctx.meta[REMOTE_ARGV] = []
        return super().parse_args(ctx, args)


def remote_argv(ctx: Any) -> list[str]:
    """The words after `--` of the command being run."""
    return list(ctx.meta.get(REMOTE_ARGV, []))
