"""The soak's adversary: faults at random moments, each logged with the time it was injected.

Faults that last (a stopped apiserver, a cut or slow tunnel, a killed process waiting for its
restart) run as background tasks, at most one per target at a time; everything they break they
put back before :meth:`Adversary.run` returns, whatever happens (``finally``), so the convergence
phase starts from a whole system.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from choreo_dp.api import vocabulary as V
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from tests.soak.driver import REGISTRY
from tests.soak.rig import DATAPLANE, Rig, bounded

HAND_MANAGER = "kubectl-edit"  # what a human's edit looks like to the API
SELECTOR = {V.DATAPLANE_LABEL: DATAPLANE}


@dataclass
class FaultLog:
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:7.1f}s  {text}")

    def text(self) -> str:
        return "\n".join(self.lines) or "(nothing injected)"


class Adversary:
    def __init__(self, rig: Rig, rng: random.Random, log: FaultLog) -> None:
        self.rig = rig
        self.rng = rng
        self.log = log
        self.busy: set[str] = set()  # targets with a lasting fault in progress
        self._tasks: set[asyncio.Task[None]] = set()
        self.injected: dict[str, int] = {}
        self.faults: dict[str, tuple[int, Callable[[], Awaitable[None]]]] = {
            "kill -9 agent": (10, lambda: self._kill("agent")),
            "kill -9 operator": (10, lambda: self._kill("operator")),
            "kill -9 control plane": (8, lambda: self._kill("control-plane")),
            "SIGSTOP kube-apiserver": (6, self._stop_apiserver),
            "restart kube-apiserver": (3, self._restart_apiserver),
            "cut tunnel": (8, self._cut_tunnel),
            "slow tunnel": (6, self._slow_tunnel),
            "delete ChoreoApp": (10, self._delete_app),
            "edit ChoreoApp spec": (8, self._edit_app),
            "delete Environment": (2, self._delete_env),
            "edit Environment spec": (4, self._edit_env),
            "delete child": (8, self._delete_child),
            "edit child": (6, self._edit_child),
        }

    async def run(self, stop: asyncio.Event, until: float) -> None:
        """Inject faults until ``stop`` is set; ``until`` (monotonic) bounds how long one may last."""
        self._until = until
        names = list(self.faults)
        weights = [self.faults[n][0] for n in names]
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(1.0, 5.0))
                if stop.is_set():
                    break
                name = self.rng.choices(names, weights)[0]
                self.injected[name] = self.injected.get(name, 0) + 1
                await self.faults[name][1]()
        finally:
            await self.heal()

    async def heal(self) -> None:
        """Wait for every lasting fault to end (each is bounded), then make sure all is restored."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=180)
        for task in list(self._tasks):
            task.cancel()
        rig = self.rig
        rig.signal_apiserver(signal.SIGCONT)
        if rig.proxy is not None:
            rig.proxy.restore()
        for part in ("control-plane", "operator", "agent"):
            if rig.children.returncode(part) is not None:
                self.log.add(f"heal: {part} was down; restarting it")
                await rig.restart(part)

    def _background(self, target: str, job: Callable[[], Awaitable[None]]) -> None:
        self.busy.add(target)

        async def run() -> None:
            try:
                await job()
            except Exception as exc:  # a fault that fails is logged, never fatal to the soak
                self.log.add(f"{target}: fault task failed: {type(exc).__name__}: {exc}")
            finally:
                self.busy.discard(target)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _duration(self, low: float, high: float) -> float:
        left = max(0.5, self._until - time.monotonic())
        return min(self.rng.uniform(low, high), left)

    # --- processes ---------------------------------------------------------------------------------

    async def _kill(self, part: str) -> None:
        if part in self.busy:
            return
        await self.rig.kill9(part)
        down = self._duration(0.2, 5.0)
        self.log.add(f"kill -9 {part} (restart in {down:.1f}s)")

        async def later() -> None:
            await asyncio.sleep(down)
            await self.rig.restart(part)
            self.log.add(f"{part} restarted")

        self._background(part, later)

    # --- the kube-apiserver ------------------------------------------------------------------------

    async def _stop_apiserver(self) -> None:
        if "apiserver" in self.busy:
            return
        pause = self._duration(2.0, 20.0)
        self.rig.signal_apiserver(signal.SIGSTOP)
        self.log.add(f"SIGSTOP kube-apiserver for {pause:.1f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(pause)
            finally:
                self.rig.signal_apiserver(signal.SIGCONT)
                self.log.add("SIGCONT kube-apiserver")

        self._background("apiserver", later)

    async def _restart_apiserver(self) -> None:
        if "apiserver" in self.busy:
            return
        self.log.add("restart kube-apiserver (SIGTERM, start again on the same port and etcd)")

        async def job() -> None:
            started = time.monotonic()
            await self.rig.restart_apiserver()
            self.log.add(f"kube-apiserver ready again after {time.monotonic() - started:.1f}s")

        self._background("apiserver", job)

    # --- the tunnel --------------------------------------------------------------------------------

    async def _cut_tunnel(self) -> None:
        proxy = self.rig.proxy
        if proxy is None or "tunnel" in self.busy:
            return
        outage = self._duration(2.0, 15.0)
        proxy.cut()
        self.log.add(f"cut tunnel for {outage:.1f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(outage)
            finally:
                proxy.up = True
                self.log.add("tunnel restored")

        self._background("tunnel", later)

    async def _slow_tunnel(self) -> None:
        proxy = self.rig.proxy
        if proxy is None or "tunnel" in self.busy:
            return
        delay, span = self.rng.uniform(0.1, 1.0), self._duration(5.0, 20.0)
        proxy.latency = delay
        self.log.add(f"tunnel latency {delay * 1000:.0f} ms per chunk for {span:.1f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(span)
            finally:
                proxy.latency = 0.0
                self.log.add("tunnel latency removed")

        self._background("tunnel", later)

    # --- hands on the cluster ----------------------------------------------------------------------

    async def _by_hand(self, what: str, job: Callable[[], Awaitable[str | None]]) -> None:
        """A human's kubectl call: logged with its target, or with why it did not happen."""
        try:
            done = await bounded(job())
        except (ApiError, TimeoutError, OSError) as exc:
            self.log.add(f"{what}: not done ({type(exc).__name__}: {str(exc)[:120]})")
            return
        if done:
            self.log.add(f"{what}: {done}")

    async def _pick(self, res: Any) -> dict[str, Any] | None:
        kube = self.rig.kube
        assert kube is not None
        items, _ = await kube.list(res, label_selector=SELECTOR)
        live = [{**i, "kind": res.kind} for i in items if not i["metadata"].get("deletionTimestamp")]
        return self.rng.choice(sorted(live, key=_where)) if live else None

    async def _delete_app(self) -> None:
        async def job() -> str | None:
            app = await self._pick(R.CHOREOAPPS)
            if app is None:
                return None
            assert self.rig.kube is not None
            await self.rig.kube.delete(R.CHOREOAPPS, app["metadata"]["name"], app["metadata"]["namespace"])
            return _where(app)

        await self._by_hand("kubectl delete choreoapp", job)

    async def _edit_app(self) -> None:
        async def job() -> str | None:
            app = await self._pick(R.CHOREOAPPS)
            if app is None:
                return None
            change = self.rng.choice(
                [
                    {"replicas": 3},
                    {"image": f"{REGISTRY}hand-edited:6.6.6"},
                    {"env": [{"name": "EDITED", "value": "by hand"}]},
                ]
            )
            assert self.rig.kube is not None
            await self.rig.kube.patch(
                R.CHOREOAPPS,
                app["metadata"]["name"],
                {"spec": change},
                namespace=app["metadata"]["namespace"],
                field_manager=HAND_MANAGER,
            )
            return f"{_where(app)} spec <- {change}"

        await self._by_hand("kubectl edit choreoapp", job)

    async def _delete_env(self) -> None:
        async def job() -> str | None:
            env = await self._pick(R.ENVIRONMENTS)
            if env is None:
                return None
            assert self.rig.kube is not None
            await self.rig.kube.delete(R.ENVIRONMENTS, env["metadata"]["name"])
            return _where(env)

        await self._by_hand("kubectl delete environment", job)

    async def _edit_env(self) -> None:
        async def job() -> str | None:
            env = await self._pick(R.ENVIRONMENTS)
            if env is None:
                return None
            assert self.rig.kube is not None
            await self.rig.kube.patch(
                R.ENVIRONMENTS,
                env["metadata"]["name"],
                {"spec": {"displayName": "edited by hand"}},
                field_manager=HAND_MANAGER,
            )
            return f"{_where(env)} spec.displayName <- 'edited by hand'"

        await self._by_hand("kubectl edit environment", job)

    async def _delete_child(self) -> None:
        async def job() -> str | None:
            app = await self._pick(R.CHOREOAPPS)
            if app is None:
                return None
            res = self.rng.choice([R.DEPLOYMENTS, R.SERVICES])
            name, ns = app["metadata"]["name"], app["metadata"]["namespace"]
            assert self.rig.kube is not None
            deleted = await self.rig.kube.delete(res, name, ns)
            return f"{res.kind} {ns}/{name}" + ("" if deleted else " (there was none)")

        await self._by_hand("kubectl delete child", job)

    async def _edit_child(self) -> None:
        async def job() -> str | None:
            app = await self._pick(R.CHOREOAPPS)
            if app is None:
                return None
            name, ns = app["metadata"]["name"], app["metadata"]["namespace"]
            kube = self.rig.kube
            assert kube is not None
            if self.rng.random() < 0.5:
                await kube.patch(
                    R.DEPLOYMENTS, name, {"spec": {"replicas": 7}}, namespace=ns, field_manager=HAND_MANAGER
                )
                return f"Deployment {ns}/{name} spec.replicas <- 7"
            service = await kube.get(R.SERVICES, name, ns)
            if service is None:
                return f"Service {ns}/{name}: there is none"
            selector = dict((service.get("spec") or {}).get("selector") or {})
            if not selector:
                return None
            first = sorted(selector)[0]
            await kube.patch(
                R.SERVICES,
                name,
                {"spec": {"selector": {first: "hijacked"}}},
                namespace=ns,
                field_manager=HAND_MANAGER,
            )
            return f"Service {ns}/{name} spec.selector[{first}] <- hijacked"

        await self._by_hand("kubectl edit child", job)


def _where(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj.get('kind', '')} {ns}/{meta['name']}" if ns else f"{obj.get('kind', '')} {meta['name']}"
