"""The soak's driver: random desired-state changes through the control plane's REST API.

It keeps a ledger of what the control plane *acknowledged*: a key whose last answered request was a
put (202) is desired, one whose last answered request was a delete is not; a request that got no
answer (the control plane was killed mid-request, the call timed out) leaves the key ``unknown``
until a later request is answered. The checker holds the control plane to the ledger (an
acknowledged write survives ``kill -9``) and reads the desired state itself from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from tests.soak.rig import DATAPLANE

ENVIRONMENTS = ("dev", "stage", "prod")
APP_NAMES = tuple(f"app-{i:02d}" for i in range(12))  # x 3 environments: up to 36 apps
REGISTRY = "ghcr.io/acme/"
VISIBILITIES = ("Project", "Organization", "Public")

State = Literal["present", "absent", "unknown"]


def env_spec(env: str, generation: int = 0) -> dict[str, Any]:
    return {
        "displayName": f"{env} (soak, v{generation})",
        "registry": {"allowedPrefixes": [REGISTRY]},
        "gateways": {
            "internal": {
                "gatewayName": "internal",
                "gatewayNamespace": "choreo-gateways",
                "hostname": f"internal.{env}.soak.local",
            },
            "external": {
                "gatewayName": "external",
                "gatewayNamespace": "choreo-gateways",
                "hostname": f"{env}.soak.local",
            },
        },
    }


def app_spec(rng: random.Random, name: str) -> dict[str, Any]:
    index = int(name.rsplit("-", 1)[1])
    spec: dict[str, Any] = {
        "project": f"p{index % 3}",
        "type": "worker" if index % 4 == 3 else "service",
        "image": f"{REGISTRY}{name}:1.{rng.randrange(50)}",
        "replicas": rng.randint(1, 2),
        "env": [{"name": "SOAK_VALUE", "value": str(rng.randrange(10_000))}],
    }
    if spec["type"] == "service":
        spec["endpoints"] = [
            {"name": "http", "port": 8080, "protocol": "REST", "visibility": rng.choice(VISIBILITIES)}
        ]
    return spec


def app_key(env: str, name: str) -> str:
    return f"ChoreoApp/{env}/{name}"


def env_key(env: str) -> str:
    return f"Environment/{env}"


@dataclass
class Ledger:
    state: dict[str, State] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def desired(self, key: str) -> bool:
        return self.state.get(key) == "present"


class Driver:
    def __init__(
        self, rng: random.Random, client: Callable[[], httpx.AsyncClient], say: Callable[[str], None]
    ) -> None:
        self.rng = rng
        self.client = client
        self.say = say
        self.ledger = Ledger()
        self.unexpected: list[str] = []  # answers the API should never give (the test fails on them)
        self._env_generation = dict.fromkeys(ENVIRONMENTS, 0)

    async def run(self, stop: asyncio.Event, initial_apps: int = 20) -> None:
        async with self.client() as cp:
            for env in ENVIRONMENTS:
                await self._put_env(cp, env)
            for _ in range(initial_apps):
                await self._put_app(cp)
            while not stop.is_set():
                await self.step(cp)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(0.3, 1.5))

    async def step(self, cp: httpx.AsyncClient) -> None:
        roll = self.rng.random()
        if roll < 0.55:
            await self._put_app(cp)
        elif roll < 0.77:
            await self._delete_app(cp)
        elif roll < 0.89:
            await self._promote(cp)
        elif roll < 0.98:
            await self._put_env(cp, self.rng.choice(ENVIRONMENTS))
        else:
            await self._delete_env(cp)

    # --- operations --------------------------------------------------------------------------------

    async def _call(
        self, cp: httpx.AsyncClient, what: str, method: str, path: str, body: Any = None
    ) -> httpx.Response | None:
        """One request; None when it got no answer (the effect is then unknown)."""
        try:
            r = await cp.request(method, path, json=body)
        except (httpx.HTTPError, OSError) as exc:
            self.ledger.count(f"{what}: no answer ({type(exc).__name__})")
            return None
        self.ledger.count(f"{what}: {r.status_code}")
        return r

    async def _put_env(self, cp: httpx.AsyncClient, env: str) -> None:
        self._env_generation[env] += 1
        r = await self._call(
            cp,
            "put environment",
            "PUT",
            f"/api/v1/dataplanes/{DATAPLANE}/environments/{env}",
            {"spec": env_spec(env, self._env_generation[env])},
        )
        self._settle(env_key(env), r, "present")

    async def _put_app(self, cp: httpx.AsyncClient) -> None:
        env, name = self.rng.choice(ENVIRONMENTS), self.rng.choice(APP_NAMES)
        if not self.ledger.desired(env_key(env)):
            await self._put_env(cp, env)
        r = await self._call(
            cp,
            "put app",
            "PUT",
            f"/api/v1/dataplanes/{DATAPLANE}/environments/{env}/apps/{name}",
            {"spec": app_spec(self.rng, name)},
        )
        self._settle(app_key(env, name), r, "present")

    async def _delete_app(self, cp: httpx.AsyncClient) -> None:
        present = sorted(
            k for k, s in self.ledger.state.items() if k.startswith("ChoreoApp/") and s != "absent"
        )
        if not present:
            return
        _, env, name = self.rng.choice(present).split("/")
        r = await self._call(
            cp, "delete app", "DELETE", f"/api/v1/dataplanes/{DATAPLANE}/environments/{env}/apps/{name}"
        )
        self._settle(app_key(env, name), r, "absent")

    async def _delete_env(self, cp: httpx.AsyncClient) -> None:
        env = self.rng.choice(ENVIRONMENTS)
        r = await self._call(
            cp, "delete environment", "DELETE", f"/api/v1/dataplanes/{DATAPLANE}/environments/{env}"
        )
        self._settle(env_key(env), r, "absent")
        prefix = f"ChoreoApp/{env}/"
        for key in [k for k in self.ledger.state if k.startswith(prefix)]:
            # the environment takes its apps with it (each listed in "removed" when answered)
            self._settle(key, r, "absent")

    async def _promote(self, cp: httpx.AsyncClient) -> None:
        """Promotion needs a reported digest: a minority of the operations, refusals expected."""
        src, dst = self.rng.sample(ENVIRONMENTS, 2)
        candidates = sorted(
            k for k, s in self.ledger.state.items() if k.startswith(f"ChoreoApp/{src}/") and s == "present"
        )
        if not candidates or not self.ledger.desired(env_key(dst)):
            return
        name = self.rng.choice(candidates).rsplit("/", 1)[1]
        body = {
            "app": name,
            "from": {"dataplane": DATAPLANE, "environment": src},
            "to": {"dataplane": DATAPLANE, "environment": dst},
        }
        r = await self._call(cp, "promotion", "POST", "/api/v1/promotions", body)
        self._settle(app_key(dst, name), r, "present")

    def _settle(self, key: str, r: httpx.Response | None, effect: State) -> None:
        if r is None or r.status_code >= 500:
            self.ledger.state[key] = "unknown"
        elif r.status_code == 202:
            self.ledger.state[key] = effect
        elif r.status_code == 404 and effect == "absent":
            self.ledger.state[key] = "absent"
        elif r.status_code not in (404, 409, 422):
            line = f"{key}: unexpected answer {r.status_code} {r.text[:300]}"
            self.unexpected.append(line)
            self.say(f"driver: {line}")
