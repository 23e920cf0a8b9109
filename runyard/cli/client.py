"""The CLI's REST client: the logged-in server, and errors as one clear sentence."""

from __future__ import annotations

from typing import Any

import click
import httpx

from runyard.cli import config


class Api:
    def __init__(self, host: str | None = None, key: str | None = None) -> None:
        saved = config.load()
        self.host = (host or saved.get("host") or "").rstrip("/")
        key = key or saved.get("api_key")
        if not self.host or not key:
            raise click.ClickException(
                "not logged in: run `runyard login --host URL` (or `runyard up`) first"
            )
        self.http = httpx.Client(
            base_url=self.host, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.host}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text.strip() or response.reason_phrase}
            raise ApiFailed(response.status_code, body)
        return response.json()


class ApiFailed(click.ClickException):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        message = str(body.get("error", body))
        for problem in body.get("problems", []):
            message += f"\n  line {problem['line']}, column {problem['column']}: "
            message += problem["message"]
        super().__init__(message)
        self.status = status
        self.body = body
