"""A small client for Superset's REST API: log in once, then JSON (and zip) requests."""

from __future__ import annotations

import json
from typing import Any

import requests

from periscope.errors import PeriscopeError


class SupersetError(PeriscopeError):
    """Superset refused a request; the message carries its answer."""


class SupersetClient:
    """A logged-in session (JWT for the API, the CSRF token for writes)."""

    def __init__(self, url: str, username: str, password: str, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        try:
            answer = self.session.post(
                f"{self.url}/api/v1/security/login",
                json={"username": username, "password": password, "provider": "db"},
                timeout=timeout_s,
            )
        except requests.ConnectionError as exc:
            raise SupersetError(
                f"Superset does not answer at {self.url} ({exc.__class__.__name__}); "
                "start it with `periscope services up superset`"
            ) from None
        _raise_for(answer, "log in")
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        self.session.headers["Referer"] = self.url
        csrf = self.get("/api/v1/security/csrf_token/")["result"]
        self.session.headers["X-CSRFToken"] = csrf

    def get(self, path: str, **params: Any) -> Any:
        answer = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)
        _raise_for(answer, f"GET {path}")
        return answer.json()

    def put(self, path: str, body: dict[str, Any]) -> Any:
        answer = self.session.put(f"{self.url}{path}", json=body, timeout=self.timeout_s)
        _raise_for(answer, f"PUT {path}")
        return answer.json()

    def raw_get(self, path: str, **params: Any) -> requests.Response:
        """A GET whose answer the caller judges (chart data: an error is a finding)."""
        return self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)

    def import_zip(self, kind: str, bundle: bytes, passwords: dict[str, str] | None = None) -> None:
        """POST a bundle to /api/v1/<kind>/import/, overwriting what has the same UUIDs."""
        form = {"overwrite": "true", "passwords": json.dumps(passwords or {})}
        answer = self.session.post(
            f"{self.url}/api/v1/{kind}/import/",
            files={"formData": ("bundle.zip", bundle, "application/zip")},
            data=form,
            timeout=self.timeout_s,
        )
        _raise_for(answer, f"import {kind}")

    def dashboards(self) -> list[dict[str, Any]]:
        """Every dashboard: id, title, slug."""
        query = "(columns:!(id,dashboard_title,slug),page_size:100)"
        return list(self.get("/api/v1/dashboard/", q=query)["result"])

    def dashboard_charts(self, dashboard_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/dashboard/{dashboard_id}/charts")["result"])

    def export_dashboards(self, ids: list[int]) -> bytes:
        answer = self.raw_get("/api/v1/dashboard/export/", q=f"!({','.join(map(str, ids))})")
        _raise_for(answer, "export dashboards")
        return answer.content


def _raise_for(answer: requests.Response, what: str) -> None:
    if answer.status_code >= 400:
        raise SupersetError(
            f"Superset refused to {what} ({answer.status_code}): {answer.text[:800]}"
        )
