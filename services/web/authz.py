"""Who may call which route.

Every route is declared with its rule, `route(path, endpoint, rule)`, and the
`Authorize` middleware (services/web/guard.py) checks that rule before the handler
runs (the checks are in services/web/checks.py); a route declared without one is
refused. A rule names what the route addresses and the least role needed on it:

- a project (`{project}` in the path), a pipeline's run button (the pipeline's
  `triggers.manual.role`, default maintainer), a run (its project);
- an agent: *reading* it needs a role in a project it serves (directly or through an
  organization it is assigned to), or having made it; *managing* it (delete, change
  its projects or organizations) needs maintainer in every project it serves and owner
  of every organization it is assigned to, or, while it serves nothing, having made it;
- an organization (the caller's member role in it), an API key (its user), or the
  projects or organization a request's JSON body names;
- `SIGNED_IN`: any user or key; the handler shows only what the caller may see;
- `ADMIN`: the site admin (a user or key whose overall role is `admin`), who also
  passes every other rule; `PUBLIC`: no sign-in.

`docs/security.md` holds the table `table()` renders; tests/security/test_routes.py
checks it against the routes and walks every route as every role of two organizations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp


@dataclass(frozen=True)
class Need:
    """The least `role` needed on what `on` names (a key of `checks.CHECKS`)."""

    on: str
    role: str = ""


@dataclass(frozen=True)
class Rule:
    needs: tuple[Need, ...] = ()
    public: bool = False
    note: str = ""  # what the handler filters or checks besides; shown in the docs

    def __and__(self, other: Rule) -> Rule:
        note = "; ".join(n for n in (self.note, other.note) if n)
        return Rule(self.needs + other.needs, note=note)

    def but(self, note: str) -> Rule:
        return Rule(self.needs, self.public, note)

    @property
    def reads_body(self) -> bool:
        return any(n.on.startswith("body-") for n in self.needs)

    def text(self) -> str:
        if self.public:
            return "anyone, signed in or not"
        parts = [_TEXTS[n.on].format(role=n.role) for n in self.needs] or ["signed in"]
        return " and ".join(parts) + (f"; {self.note}" if self.note else "")


PUBLIC = Rule(public=True)
SIGNED_IN = Rule()
ADMIN = Rule((Need("site", "admin"),))
PERSON = Rule((Need("person"),))
ORG_OWNER_SOMEWHERE = Rule((Need("some-org", "owner"),))


def project(role: str) -> Rule:
    return Rule((Need("project", role),))


def run(role: str, pending: bool = False) -> Rule:
    return Rule((Need("run-or-pending" if pending else "run", role),))


def run_button() -> Rule:
    return Rule((Need("pipeline", "run-button"),))


def agent(role: str) -> Rule:
    return Rule((Need("agent", role),))


def org(role: str) -> Rule:
    return Rule((Need("org", role),))


def org_project() -> Rule:
    return Rule((Need("org-project"),))


def key_holder() -> Rule:
    return Rule((Need("key", "holder"),))


def body_projects(role: str) -> Rule:
    return Rule((Need("body-projects", role),))


def body_org(role: str) -> Rule:
    return Rule((Need("body-org", role),))


_TEXTS = {
    "site": "site admin",
    "person": "a user (not a service key)",
    "some-org": "{role} of an organization",
    "project": "{role} in the project",
    "run": "{role} in the run's project",
    "run-or-pending": "{role} in the run's project (a run not made yet shows only a waiting page)",
    "pipeline": "the pipeline's run-button role in the project (default maintainer)",
    "agent": "may {role} the agent",  # "see" or "manage": see the module's docstring
    "org": "{role} in the organization",
    "org-project": "the project is the organization's",
    "key": "the key's user",
    "body-projects": "{role} in every project named in `projects` (none named: site admin)",
    "body-org": "{role} in the organization named in `org` (none named: site admin)",
}


class Guarded(Route):
    """A route with its rule."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], rule: Rule, methods: list[str] | None
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.rule = rule


class GuardedMount(Mount):
    def __init__(self, path: str, app: ASGIApp, rule: Rule, name: str) -> None:
        super().__init__(path, app=app, name=name)
        self.rule = rule


def route(
    path: str, endpoint: Callable[..., Any], rule: Rule, methods: list[str] | None = None
) -> Route:
    return Guarded(path, endpoint, rule, methods)


def rule_of(found: BaseRoute) -> Rule | None:
    rule = getattr(found, "rule", None)
    return rule if isinstance(rule, Rule) else None


def table(routes: Sequence[BaseRoute]) -> str:
    """The docs' table: every route, its methods and the rule it is declared with."""
    lines = ["| method | path | who may |", "|---|---|---|"]
    for found in routes:
        rule = rule_of(found)
        path = getattr(found, "path", "?")
        methods = sorted(getattr(found, "methods", None) or {"GET"})
        methods = [m for m in methods if m != "HEAD"] or ["GET"]
        text = rule.text() if rule else "**no rule: refused**"
        shown = f"{path}/…" if isinstance(found, Mount) else path
        lines.append(f"| {', '.join(methods)} | `{shown}` | {text} |")
    return "\n".join(lines)
