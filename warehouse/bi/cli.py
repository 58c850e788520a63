"""`periscope bi`: Superset's dashboards as code (provision, check, export, open)."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from periscope.services.superset import SupersetServer
from periscope.settings import get_settings

bi_app = typer.Typer(
    help="Superset dashboards on the marts, kept as code in warehouse/bi/superset/bundle.",
    no_args_is_help=True,
)
console = Console()

BundleOption = Annotated[
    Path | None,
    typer.Option("--bundle", help="Bundle folder (default: warehouse/bi/superset/bundle)."),
]


def _server() -> SupersetServer:
    return SupersetServer(get_settings())


def _client(server: SupersetServer):  # type: ignore[no-untyped-def]
    from warehouse.bi.superset.client import SupersetClient

    return SupersetClient(server.url, server.admin_user, server.admin_password)


def _bundle(bundle: Path | None) -> Path:
    from warehouse.bi.superset import BUNDLE_DIR

    return bundle or BUNDLE_DIR


@bi_app.command("provision")
def provision_command(bundle: BundleOption = None) -> None:
    """Start Superset if needed and import the bundle (idempotent: a rerun updates in place)."""
    from warehouse.bi.superset.provision import (
        dashboard_titles,
        database_uri,
        provision,
        read_bundle,
    )

    settings = get_settings()
    server = _server()
    with console.status(f"starting Superset on {server.address} (installs it once) ..."):
        outcome = server.start()
    console.print(f"[green]✔[/] superset  {outcome}")
    folder = _bundle(bundle)
    uri = database_uri(
        settings.postgres_bi_user,
        settings.postgres_host,
        settings.postgres_port,
        settings.postgres_db,
    )
    with console.status("importing the dashboards ..."):
        provision(_client(server), folder, uri, settings.postgres_bi_password.get_secret_value())
    titles = ", ".join(dashboard_titles(read_bundle(folder)))
    console.print(f"[green]✔[/] provisioned {titles} from {folder}")


@bi_app.command("check")
def check_command(bundle: BundleOption = None) -> None:
    """Request every chart's data on the bundle's dashboards; exit 1 naming any broken chart."""
    from warehouse.bi.superset.provision import check_charts, dashboard_titles, read_bundle

    titles = dashboard_titles(read_bundle(_bundle(bundle)))
    checks = check_charts(_client(_server()), titles)
    table = Table("dashboard", "chart", "rows", "columns / error")
    for check in checks:
        if not check.ok:
            detail = f"[red]{check.error}[/]"
        elif not check.rows:
            detail = "[yellow]no rows (has this source been loaded?)[/]"
        else:
            detail = ", ".join(check.columns)
        table.add_row(check.dashboard, check.chart, str(check.rows), detail)
    console.print(table)
    broken = [c for c in checks if not c.ok]
    if broken:
        names = "; ".join(f"{c.dashboard} / {c.chart}: {c.error}" for c in broken)
        console.print(f"[bold red]broken charts:[/] {names}")
        raise typer.Exit(1)


@bi_app.command("export")
def export_command(
    bundle: BundleOption = None,
    include_new: Annotated[
        bool, typer.Option("--include-new", help="Also export dashboards not yet in the bundle.")
    ] = False,
) -> None:
    """Write the dashboards as edited in Superset back to the bundle (without passwords)."""
    from warehouse.bi.superset.provision import export

    folder = _bundle(bundle)
    titles = export(_client(_server()), folder, include_new=include_new)
    if not titles:
        console.print("[yellow]no dashboard to export[/]")
        raise typer.Exit(1)
    console.print(f"[green]✔[/] exported {', '.join(titles)} to {folder}; review with git diff")


@bi_app.command("open")
def open_command(
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Also open it in a web browser.")
    ] = False,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print the admin password too.")
    ] = False,
) -> None:
    """Print Superset's URL, the login and each dashboard's address."""
    from warehouse.bi.superset import BUNDLE_DIR
    from warehouse.bi.superset.provision import bundle_configs, read_bundle

    server = _server()
    # A terminal's scrollback and CI logs keep what is printed: the password only when asked
    password = (
        server.admin_password
        if show_password
        else "password: PERISCOPE_SUPERSET_ADMIN_PASSWORD, or --show-password"
    )
    console.print(f"Superset: {server.url}  (login {server.admin_user} / {password})")
    for name, config in bundle_configs(read_bundle(BUNDLE_DIR)).items():
        if name.startswith("dashboards/"):
            url = f"{server.url}/superset/dashboard/{config['slug']}/"
            console.print(f"  {config['dashboard_title']:<18} {url}", highlight=False)
    if browser:
        webbrowser.open(server.url)
