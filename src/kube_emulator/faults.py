"""Fault injection for tests: the next N matching requests fail or stall.

``srv.faults.add(verb="patch", resource="deployments", status=429, count=2, retry_after=1)``
``srv.faults.add(verb="get", resource="secrets", stall=5.0)`` — holds the request 5 s, then serves it.
Verbs are the Kubernetes ones (get, list, watch, create, update, patch, delete,
deletecollection) or ``*``; ``resource`` is a plural, optionally ``plural/subresource``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kube_emulator.errors import ApiFailure

MAX_STALL_SECONDS = 300.0


@dataclass
class Fault:
    verb: str
    resource: str
    status: int | None
    count: int
    retry_after: int | None
    stall: float
    namespace: str | None
    name: str | None
    message: str
    hits: int = 0

    def matches(self, verb: str, resource: str, subresource: str, namespace: str, name: str) -> bool:
        if self.verb not in ("*", verb):
            return False
        full = f"{resource}/{subresource}" if subresource else resource
        if self.resource not in ("*", resource, full):
            return False
        if self.namespace is not None and self.namespace != namespace:
            return False
        return self.name is None or self.name == name


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)

    def add(
        self,
        verb: str = "*",
        resource: str = "*",
        status: int | None = None,
        count: int = 1,
        retry_after: int | None = None,
        stall: float = 0.0,
        namespace: str | None = None,
        name: str | None = None,
        message: str = "injected fault",
    ) -> Fault:
        if status is None and stall <= 0:
            raise ValueError("a fault needs a status to fail with or a stall duration")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error code")
        f = Fault(
            verb,
            resource,
            status,
            count,
            retry_after,
            min(stall, MAX_STALL_SECONDS),
            namespace,
            name,
            message,
        )
        self.rules.append(f)
        return f

    def clear(self) -> None:
        self.rules.clear()

    def take(self, verb: str, resource: str, subresource: str, namespace: str, name: str) -> Fault | None:
        for f in self.rules:
            if f.count > 0 and f.matches(verb, resource, subresource, namespace, name):
                f.count -= 1
                f.hits += 1
                if f.count <= 0:
                    self.rules.remove(f)
                return f
        return None

    async def apply(self, verb: str, resource: str, subresource: str, namespace: str, name: str) -> None:
        """Called before each resource request; raises the injected failure after any stall."""
        f = self.take(verb, resource, subresource, namespace, name)
        if f is None:
            return
        if f.stall > 0:
            await asyncio.sleep(f.stall)
        if f.status is not None:
            raise ApiFailure(f.status, f.message, retry_after=f.retry_after)
