"""``run_operator``: the whole operator as one coroutine (CLI, ``choreo-dp run``, sandbox, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import kopf

from choreo_dp.kube import KubeClient
from choreo_dp.observability.health import serve
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.handlers import build_registry, configure_settings
from choreo_dp.render import ClusterCapabilities

log = logging.getLogger("choreo_dp.operator")


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
            health = await serve([ctl.liveness], config.listen_host, ports)
        await ctl.start()
        settings = kopf.OperatorSettings()
        configure_settings(settings, gateway_api)
        registry = build_registry(ctl, kube.config)
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=True,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=kopf.Memo(),
        )
    finally:
        if ctl is not None:
            await ctl.stop()
        if secrets is not None:
            with contextlib.suppress(Exception):
                await secrets.close()
        if health is not None:
            await health.cleanup()
        await kube.close()
