from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from periscope import cli
from periscope.errors import PeriscopeError

runner = CliRunner()


def _all_command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (Typer vendors its own click)
            paths += _all_command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_help():
    root = typer.main.get_command(cli.app)
    paths = _all_command_paths(root)
    assert ("services", "up") in paths and ("topics", "describe") in paths
    for path in paths:
        result = runner.invoke(cli.app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["services", "up", "--no-such-flag"], ["topics", "create", "extra"]],
)
def test_unknown_arguments_print_usage(args):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert "Usage:" in result.output


def test_unknown_service_name_is_a_usage_error():
    result = runner.invoke(cli.app, ["services", "status", "redis"])
    assert result.exit_code == 2
    assert "unknown service" in result.output


def test_missing_passwords_give_a_clear_error(monkeypatch):
    monkeypatch.delenv("PERISCOPE_POSTGRES_BI_PASSWORD")
    with pytest.raises(PeriscopeError, match=r"PERISCOPE_POSTGRES_BI_PASSWORD.*make setup"):
        cli._settings()


def test_config_masks_secrets():
    result = runner.invoke(cli.app, ["config"])
    assert result.exit_code == 0, result.output
    assert "spark_master" in result.output and "owner-secret" not in result.output
