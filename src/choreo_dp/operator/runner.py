"""``run_operator``: the whole operator as one coroutine (CLI, ``choreo-dp run``, sandbox, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Collection, Iterator
from typing import Any

import kopf

from choreo_dp.kube import KubeClient
from choreo_dp.observability.health import serve
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.handlers import build_registry, configure_settings
from choreo_dp.render import ClusterCapabilities

log = logging.getLogger("choreo_dp.operator")


class _NotKopfTasks(Collection["asyncio.Task[Any]"]):
    """The tasks kopf must leave alone when it stops.

    ``kopf.operator`` cancels every task created while it ran as "hung" — in a shared process
    (``choreo-dp run``, the sandbox, tests) that includes the agent's and the caller's own tasks.
    Only tasks running kopf's own coroutines are kopf's to cancel.
    """

    def __contains__(self, task: object) -> bool:
        if not isinstance(task, asyncio.Task):
            return False
        code = getattr(task.get_coro(), "cr_code", None)
        return code is None or f"{os.sep}kopf{os.sep}" not in code.co_filename

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


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
            gateway_api = await kube.served("gateway.networking.k8s.io/v1")
        caps = ClusterCapabilities(gateway_api=gateway_api)
        log.info("cluster capabilities: gateway API %s", "served" if gateway_api else "not served (Ingress)")
        if config.secrets_factory is not None:
            secrets = config.secrets_factory(kube)
            await secrets.start()
        ctl = Controller(kube, config, caps, secrets)
        ports = [p for p in (config.health_port, config.metrics_port) if p is not None]
        if ports:
            health = await serve([ctl.liveness, *config.extra_liveness], config.listen_host, ports)
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
            await kopf.run_tasks(tasks, ignored=_NotKopfTasks())
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
