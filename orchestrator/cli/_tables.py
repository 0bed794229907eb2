"""How the CLI prints a table: a rich table on a terminal wide enough, plain rows otherwise.

Without a terminal (a pipe, a file, cron's log) a table is one line per row, cells separated by
tabs, the header row first, so `cut -f1`, `grep` and `sort` work on it and no cell is ever wrapped
over several lines; its title, which is not a row, goes to stderr. On a terminal the columns that
hold identifiers (run and backup ids, host names, release ids) never wrap: when the terminal is too
narrow to show each of them whole, the table is printed as plain rows there too.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

#: column headers (lower case) whose cells are identifiers: never wrapped nor cut
IDENTIFIER_COLUMNS = frozenset({
    "id", "name", "host", "server", "env", "release", "before", "after", "previous", "at (utc)",
    "started (utc)",
})


def cell_text(console: Console, cell: RenderableType) -> str:
    """The plain text of a cell (markup and styles dropped), on one line."""
    if isinstance(cell, str):
        text = console.render_str(cell).plain
    elif isinstance(cell, Text):
        text = cell.plain
    else:
        with console.capture() as capture:
            console.print(cell, no_wrap=True, crop=False, highlight=False)
        text = Text.from_ansi(capture.get()).plain
    return " ".join(text.split())


def plain_rows(console: Console, table: Table) -> list[str]:
    """The table as tab-separated lines: the header row, then one line per row."""
    columns = [[cell_text(console, column.header), *(cell_text(console, c) for c in column.cells)]
               for column in table.columns]
    return ["\t".join(row) for row in zip(*columns, strict=True)]


def keep_identifiers_whole(table: Table) -> list[list[str]]:
    """Mark the identifier columns no_wrap; return their cells' texts (to check they stay whole)."""
    kept = []
    for column in table.columns:
        if str(column.header).strip().lower() in IDENTIFIER_COLUMNS:
            column.no_wrap = True
            kept.append([str(c) for c in column.cells])
    return kept


def fits(console: Console, table: Table, identifiers: list[list[str]]) -> bool:
    """Whether every identifier shows whole on one line of the table as this terminal renders it."""
    with console.capture() as capture:
        console.print(table)
    rendered = Text.from_ansi(capture.get()).plain
    return all(cell_text(console, value) in rendered for cells in identifiers for value in cells)


def print_table(console: Console, table: Table, *, title_to: Console | None = None) -> None:
    """Print `table` on `console` (see the module docstring); a plain table's title goes to
    `title_to` (the CLI's stderr)."""
    if console.is_terminal:
        identifiers = keep_identifiers_whole(table)
        if fits(console, table, identifiers):
            console.print(table)
            return
    if table.title and title_to is not None:
        title_to.print(table.title)
    console.file.write("".join(f"{line}\n" for line in plain_rows(console, table)))
    console.file.flush()
