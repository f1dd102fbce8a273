"""Connections: an app declares that it calls an endpoint of another app of its Environment.

The operator injects the target's address as environment variables whose names derive from the
connection's name (``orders-api`` -> ``ORDERS_API_URL``, ``_HOST``, ``_PORT``, ``_BASE_PATH``), so
the name grammar is the one that keeps that mapping one-to-one and the variables valid: lower-case
letters, digits and ``-``, starting with a letter. Upper-casing and ``-`` -> ``_`` can then never
make two connection names meet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from choreo_dp.api.common import DnsLabel, Model

# <NAME>_BASE_PATH is the longest variable; 48 + 10 stays far inside EnvVarName's 128.
CONNECTION_NAME = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"
ConnectionName = Annotated[str, Field(min_length=1, max_length=48, pattern=CONNECTION_NAME)]
ENV_SUFFIXES = ("URL", "HOST", "PORT", "BASE_PATH")


def env_prefix(connection_name: str) -> str:
    return connection_name.upper().replace("-", "_")


def env_names(connection_name: str) -> list[str]:
    """The variables a connection injects, in the order they are rendered."""
    prefix = env_prefix(connection_name)
    return [f"{prefix}_{suffix}" for suffix in ENV_SUFFIXES]


class Connection(Model):
    """This app calls one endpoint of another app in the same Environment."""

    name: ConnectionName = Field(
        description=(
            "Connection name, unique within the app: lower-case letters, digits and -, starting with a "
            "letter, e.g. orders-api. Prefix of the injected variables: ORDERS_API_URL, ORDERS_API_HOST, "
            "ORDERS_API_PORT, ORDERS_API_BASE_PATH."
        )
    )
    app: DnsLabel = Field(description="The target ChoreoApp (by name) in the same Environment, e.g. orders.")
    endpoint: DnsLabel = Field(description="The target's endpoint (spec.endpoints[].name), e.g. http.")
    project: DnsLabel | None = Field(
        default=None,
        description=(
            "The target's project when it is not this app's own. Only endpoints with visibility "
            "Organization or Public admit callers of another project. Absent: this app's project."
        ),
    )


def connection_problems(
    app_name: str | None, connections: Iterable[Connection], taken_env_names: Iterable[str]
) -> list[str]:
    """What makes a list of connections wrong on its own (one sentence each, empty when fine).

    ``taken_env_names``: the variables the app already sets (spec.env and spec.secrets); an injected
    one with the same name would silently win or lose, so it is refused instead.
    """
    problems: list[str] = []
    taken = set(taken_env_names)
    for conn in connections:
        if app_name is not None and conn.app == app_name:
            problems.append(f"connection {conn.name} targets the app itself")
        clash = sorted(taken & set(env_names(conn.name)))
        if clash:
            problems.append(
                f"connection {conn.name} injects {', '.join(clash)}, already set by spec.env or spec.secrets"
            )
    return problems


def visibility_refusal(
    caller_project: str, conn: Connection, target_project: str, visibility: str
) -> str | None:
    """Why a connection is certainly refused by its target endpoint's visibility, or None.

    The one rule a control plane can judge at push time from what it holds: a ``Project``
    endpoint admits callers of its own project only. Everything else (an app or endpoint not
    there yet) may still come, so only the operator judges it, when it resolves."""
    if visibility == "Project" and target_project != caller_project:
        return (
            f"connection {conn.name}: endpoint {conn.app}/{conn.endpoint} has visibility Project: only apps "
            f"of project {target_project} may call it, and this app is in project {caller_project}"
        )
    return None


class ConnectionStatus(Model):
    """Whether one connection resolves, as the operator last judged it."""

    name: str = Field(description="The connection's name (spec.connections[].name).")
    target: str = Field(description="What it calls, as project/app/endpoint, e.g. orders/api/http.")
    resolved: bool = Field(description="True when its variables are injected and its traffic allowed.")
    reason: str = Field(
        description=(
            "Resolved, or why not: AppNotFound, ProjectMismatch, EndpointNotFound, VisibilityForbids, "
            "SelfConnection."
        )
    )
    message: str | None = Field(default=None, description="The reason in one sentence.")
    url: str | None = Field(default=None, description="The URL injected as <NAME>_URL, when resolved.")
