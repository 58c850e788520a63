"""The `--source` option every CLI shares, checked against the source contracts when a command runs.

The known sources are read from `periscope.contracts.CONTRACTS` each time a command runs or prints
its help, never copied at import: a contract registered at run time (a test's toy source, a plugin)
is accepted, completed and listed like the built-in ones.

    source: SourceOption = "weather"          # one source
    source: SourcesOption = None              # repeatable; None means every source
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.models import ArgumentInfo, OptionInfo

from periscope import contracts

__all__ = [
    "SourceArgument",
    "SourceOption",
    "SourcesOption",
    "check_source",
    "check_sources",
    "source_argument",
    "source_names",
    "source_option",
]


def source_names() -> list[str]:
    """The sources known now, sorted."""
    return sorted(contracts.CONTRACTS)


def check_source(value: str) -> str:
    """`value` if it names a known source, else a usage error that lists the known ones."""
    if value not in contracts.CONTRACTS:
        raise typer.BadParameter(
            f"unknown source {value!r}; known sources: {', '.join(source_names())}"
        )
    return value


def check_sources(values: list[str] | None) -> list[str] | None:
    """Each of `values` checked; None (the option not given) stays None, meaning every source."""
    if values is None:
        return None
    unknown = sorted({v for v in values if v not in contracts.CONTRACTS})
    if unknown:
        raise typer.BadParameter(
            f"unknown source(s) {', '.join(map(repr, unknown))}; "
            f"known sources: {', '.join(source_names())}"
        )
    return list(dict.fromkeys(values))  # `-s weather -s weather` runs weather once


def _check(value: Any) -> Any:
    # One callback for both shapes: typer hands a list for a repeatable option.
    if value is None or isinstance(value, list | tuple):
        return check_sources(list(value) if value is not None else None)
    return check_source(value)


def _complete(incomplete: str) -> list[str]:
    return [name for name in source_names() if name.startswith(incomplete)]


def _with_names(text: str) -> str:
    return f"{text} Known: {', '.join(source_names())}."


# Typer reads `help` when it builds the command, that is on every invocation (and every
# --help): a property makes the listed names those known at that moment.
class _SourceOptionInfo(OptionInfo):
    @property
    def help(self) -> str:  # type: ignore[override]
        return _with_names(self._base_help)

    @help.setter
    def help(self, value: str | None) -> None:
        self._base_help = value or ""


class _SourceArgumentInfo(ArgumentInfo):
    @property
    def help(self) -> str:  # type: ignore[override]
        return _with_names(self._base_help)

    @help.setter
    def help(self, value: str | None) -> None:
        self._base_help = value or ""


def source_option(help: str = "The source.") -> OptionInfo:  # noqa: A002 (typer's name)
    """`--source/-s`, validated against the contracts; use in `Annotated[str | list[str] | None, ...]`."""
    return _SourceOptionInfo(
        default=...,
        param_decls=("--source", "-s"),
        help=help,
        metavar="SOURCE",
        callback=_check,
        autocompletion=_complete,
        show_default=True,
    )


def source_argument(help: str = "The source.") -> ArgumentInfo:  # noqa: A002
    """A positional source name, validated against the contracts."""
    return _SourceArgumentInfo(
        default=..., help=help, metavar="SOURCE", callback=_check, autocompletion=_complete
    )


SourceOption = Annotated[str, source_option("The source.")]
SourcesOption = Annotated[
    list[str] | None, source_option("Source (repeatable); default: every source.")
]
SourceArgument = Annotated[str, source_argument("The source.")]
