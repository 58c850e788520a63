"""Prometheus (Debian's `prometheus` package) scraping every stage's metrics and the API.

Started only when named (`periscope services up prometheus`). Its config is written from
settings at every start: one job per stage port that is not 0 (`metrics_<stage>_port`) and
one for the API's `/metrics`; it listens on 127.0.0.1 at `prometheus_port` and keeps its
data in `<local_dir>/prometheus/` (git-ignored).
"""

from __future__ import annotations

import shutil
import urllib.request

from periscope.errors import MissingDependencyError
from periscope.metrics import STAGES, metrics_port
from periscope.services._process import BackgroundService, ensure_ports_free
from periscope.settings import Settings

__all__ = ["PrometheusServer", "scrape_targets", "prometheus_config"]

# Debian's package puts the binary on PATH; the web UI's assets are compiled in.
_BINARY = "prometheus"


def scrape_targets(settings: Settings) -> dict[str, str]:
    """{job: host:port} for each stage with an endpoint and for the API."""
    targets: dict[str, str] = {
        stage: f"{settings.metrics_host}:{metrics_port(settings, stage)}"
        for stage in STAGES
        if metrics_port(settings, stage)
    }
    api_host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "") else settings.api_host
    targets["api"] = f"{api_host}:{settings.api_port}"
    return targets


def prometheus_config(settings: Settings) -> str:
    """prometheus.yml for these settings (YAML written by hand: flat and fully known).

    >>> from periscope.settings import Settings
    >>> print(prometheus_config(Settings(postgres_owner_password="x", postgres_bi_password="y",
    ...     shared_dir=".")).splitlines()[3])
      scrape_interval: 5s
    """
    interval = f"{settings.prometheus_scrape_interval_s}s"
    lines = [
        "# Written by periscope from its settings at every start; edit settings instead.",
        "global:",
        "  evaluation_interval: 15s",
        f"  scrape_interval: {interval}",
        "scrape_configs:",
    ]
    for job, target in scrape_targets(settings).items():
        lines += [
            f"  - job_name: {job}",
            "    static_configs:",
            f"      - targets: ['{target}']",
        ]
    return "\n".join(lines) + "\n"


class PrometheusServer(BackgroundService):
    """The project's Prometheus server."""

    name = "prometheus"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.local_dir / "prometheus"
        self.data_dir = self.root / "data"
        self.config_file = self.root / "prometheus.yml"
        self.pidfile = self.root / "prometheus.pid"
        self.log_file = self.root / "prometheus.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.prometheus_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def detail(self) -> str:
        jobs = ", ".join(scrape_targets(self.settings))
        return f"scrapes {jobs}; data in {self.data_dir}"

    def start(self) -> str:
        """Start Prometheus unless it runs; wait until it says it is ready."""
        if running := self._already_running():
            return running
        binary = shutil.which(_BINARY)
        if binary is None:
            raise MissingDependencyError(
                "prometheus was not found on PATH; `make setup` installs it "
                "(Debian package prometheus)."
            )
        ensure_ports_free(
            self.name, "127.0.0.1", {"prometheus_port": self.settings.prometheus_port}
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(prometheus_config(self.settings))
        process = self._launch(
            [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address={self.address}",
                "--storage.tsdb.retention.time=7d",
            ]
        )
        return f"started (pid {process.pid})"

    def healthy(self) -> bool:
        """True when Prometheus answers its readiness probe."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=3) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False
