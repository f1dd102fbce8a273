"""``run_operator``: the whole operator as one coroutine (CLI, ``choreo-dp run``, sandbox, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any

import kopf

from choreo_dp.kube import KubeClient
from choreo_dp.kube.backoff import Backoff, retrying
from choreo_dp.observability.health import Liveness, serve
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.handlers import build_registry, configure_settings
from choreo_dp.operator.manager import new_controller
from choreo_dp.render import ClusterCapabilities

log = logging.getLogger("choreo_dp.operator")


async def _run_root_tasks(tasks: Collection[asyncio.Task[Any]]) -> None:
    """kopf's root tasks, run here rather than by ``kopf.run_tasks``.

    ``run_tasks`` ends by cancelling every task created in the event loop since kopf started (it
    cannot tell whose they are), which in a shared process (the sandbox, tests) includes the
    caller's own. kopf's root tasks stop their own workers when cancelled (each watcher drains
    its workers and closes its scheduler), so stopping the roots is all a clean stop needs.
    """
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def run_operator(
    config: OperatorConfig,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or the task is cancelled); ``ready_flag`` is set once watching."""
    kube = await KubeClient.from_kubeconfig(config.kubeconfig)
    secrets: SecretsPort | None = None
    health = None
    ctl: Controller | None = None
    try:
        gateway_api = config.gateway_api
        if gateway_api is None:
            # An API server restarting as the operator starts is routine: wait for it, not exit.
            gateway_api = await retrying(
                lambda: kube.served("gateway.networking.k8s.io/v1"),
                backoff=Backoff(base=0.5, cap=10.0),
                what="API discovery",
                logger=log,
            )
        caps = ClusterCapabilities(gateway_api=gateway_api)
        log.info("cluster capabilities: gateway API %s", "served" if gateway_api else "not served (Ingress)")
        if config.secrets_factory is not None:
            secrets = config.secrets_factory(kube)
            await secrets.start()
        ctl = new_controller(kube, config, caps, secrets)
        ports = [p for p in (config.health_port, config.metrics_port) if p is not None]
        if ports:
            probes = [ctl.liveness, *config.extra_liveness]
            # the secrets refresh loop runs supervised; its probe shows when it keeps crashing
            secrets_probe = getattr(secrets, "liveness", None)
            if isinstance(secrets_probe, Liveness):
                probes.append(secrets_probe)
            health = await serve(probes, config.listen_host, ports)
        await ctl.start()
        settings = kopf.OperatorSettings()
        configure_settings(settings, gateway_api)
        registry = build_registry(ctl, kube.config)
        try:
            tasks = await kopf.spawn_tasks(
                registry=registry,
                settings=settings,
                standalone=True,
                clusterwide=True,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
                memo=kopf.Memo(),
            )
            await _run_root_tasks(tasks)
        except asyncio.CancelledError:
            # kopf cancels its own tasks when the stop flag is set; that is a clean stop, not ours.
            if stop_flag is None or not stop_flag.is_set():
                raise
    finally:
        if ctl is not None:
            await ctl.stop()
        if secrets is not None:
            with contextlib.suppress(Exception):
                await secrets.close()
        if health is not None:
            await health.cleanup()
        await kube.close()
