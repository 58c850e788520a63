"""How listing commands print rows: a Rich table for people, CSV or JSON for programs.

A Rich table never cuts a value short here: in a terminal too narrow for it a long value wraps
inside its cell, and when the output is piped or redirected the table is as wide as its values
need, one line per row, so `periscope models list | grep air_quality_forecast` finds the name.

    print_rows([Column("model"), Column("version", justify="right")], rows, fmt=fmt)
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "FORMATS",
    "Column",
    "Format",
    "FormatOption",
    "print_rows",
    "print_table",
    "rows_table",
    "write_csv",
    "write_json",
]

Format = Literal["table", "csv", "json"]
FORMATS: tuple[Format, ...] = ("table", "csv", "json")

FormatOption = Annotated[
    Format,
    typer.Option(
        "--format",
        "-f",
        help="table (for people), csv (with a header row) or json (one array of objects).",
    ),
]


@dataclass(frozen=True)
class Column:
    """A column of a listing.

    `show` turns a value into what the table shows (a `str`, or a `rich.text.Text` for style);
    CSV and JSON get the value itself, so a version stays a number and a flag a boolean.
    """

    name: str
    justify: Literal["left", "center", "right"] = "left"
    show: Callable[[Any], str | Text] | None = None


def print_rows(
    columns: Sequence[Column | str],
    rows: Iterable[Sequence[Any]],
    *,
    fmt: Format = "table",
    title: str | None = None,
    caption: str | None = None,
    null: str = "",
    console: Console | None = None,
    out: TextIO | None = None,
) -> None:
    """Print `rows` as a table (on `console`), or as CSV or JSON (on `out`, default stdout).

    `null` is how the table shows None; CSV writes an empty field and JSON `null`.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    if fmt == "table":
        print_table(
            rows_table(cols, rows, title=title, caption=caption, null=null), console=console
        )
    elif fmt == "csv":
        write_csv(cols, rows, out=out)
    elif fmt == "json":
        write_json(cols, rows, out=out)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def rows_table(
    columns: Sequence[Column],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    caption: str | None = None,
    null: str = "",
) -> Table:
    """A Rich table of `rows`; values are shown as text, never read as Rich markup."""
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(Text(column.name), justify=column.justify)
    for row in rows:
        table.add_row(
            *[_cell(column, value, null) for column, value in zip(columns, row, strict=True)]
        )
    return table


def print_table(table: Table, *, console: Console | None = None) -> None:
    """Print a Rich table with every value whole, in a narrow terminal and when piped."""
    console = console or Console()
    for column in table.columns:
        column.overflow = "fold"  # a narrow terminal wraps a long value; it never ends in "…"
    if console.is_terminal:
        console.print(table)
        return
    # Piped or redirected: no terminal width to respect, so lay the table out at its natural
    # width (one line per row) instead of Rich's default 80 columns.
    natural = console.measure(table, options=console.options.update_width(1_000_000)).maximum
    wide = Console(
        file=console.file,
        width=max(natural, console.width),
        color_system=console.color_system,  # type: ignore[arg-type]  # a name Console accepts
        force_terminal=False,
        highlight=False,
    )
    wide.print(table)


def write_csv(
    columns: Sequence[Column], rows: Iterable[Sequence[Any]], *, out: TextIO | None = None
) -> None:
    """CSV with a header row; None is an empty field, booleans are true/false."""
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])


def write_json(
    columns: Sequence[Column], rows: Iterable[Sequence[Any]], *, out: TextIO | None = None
) -> None:
    """One JSON array with an object per row, keyed by column name."""
    names = [c.name for c in columns]
    records = [dict(zip(names, map(_json_value, row), strict=True)) for row in rows]
    stream = out or sys.stdout
    json.dump(records, stream, indent=2, ensure_ascii=False)
    stream.write("\n")


def _cell(column: Column, value: Any, null: str) -> Text:
    if value is None:
        return Text(null, style="dim")
    shown = column.show(value) if column.show is not None else value
    return shown if isinstance(shown, Text) else Text(str(shown))


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Text):
        return value.plain
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Text):
        return value.plain
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
