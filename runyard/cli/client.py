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


def problem_line(problem: Any) -> str:
    """One problem of an API error: a pipeline's (line, column, message), a run form's
    (field, message; the message names the field), or whatever else came, as text."""
    if not isinstance(problem, dict):
        return str(problem)
    message = str(problem.get("message", problem))
    if "line" in problem:
        return f"line {problem['line']}, column {problem.get('column', 1)}: {message}"
    field = problem.get("field")
    if field and f"'{field}'" not in message:
        return f"{field}: {message}"
    return message


class ApiFailed(click.ClickException):
    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {"error": str(body)}
        message = str(body.get("error", body))
        problems = body.get("problems")
        for problem in problems if isinstance(problems, list) else []:
            message += f"\n  {problem_line(problem)}"
        super().__init__(message)
        self.status = status
        self.body = body
