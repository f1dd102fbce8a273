"""``choreo-dp run``: operator and agent in one process (development).

One /healthz and /metrics for both: /healthz fails when either main loop stops making progress,
and if either part ends, the other is stopped and the process exits. The operator (kopf) runs in
its own thread and event loop, the agent in the main one (see :class:`OperatorThread`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from choreo_dp.cli.agent_cmd import add_agent_arguments
from choreo_dp.cli.common import UsageError, add_env_argument, add_logging_arguments, add_verb, port

if TYPE_CHECKING:
    from choreo_dp.operator.config import OperatorConfig

log = logging.getLogger(__name__)


class OperatorThread:
    """The operator (kopf) in its own thread with its own event loop.

    kopf's documentation advises against sharing its event loop with other routines: it installs
    signal handlers over the caller's, and its task orchestration assumes the loop is its own. So
    the agent keeps the main loop and kopf gets a loop of its own; the two share nothing but the
    liveness probes read by /healthz (plain attributes, safe to read from the other thread).
    """

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self._ended: asyncio.Event | None = None
        self._caller: asyncio.AbstractEventLoop | None = None

    def start(self, ended: asyncio.Event) -> None:
        """Start; ``ended`` (of the caller's loop) is set when the operator stops for any reason."""
        self._caller = asyncio.get_running_loop()
        self._ended = ended
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the caller, who re-raises it in its own thread
            self.error = exc
        finally:
            if self._caller is not None and self._ended is not None and not self._caller.is_closed():
                self._caller.call_soon_threadsafe(self._ended.set)

    async def _run(self) -> None:
        from choreo_dp.operator import run_operator

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested.is_set():
            return
        await run_operator(self.config, self._stop)

    def stop(self) -> None:
        self._stop_requested.set()
        loop, flag = self._loop, self._stop
        if loop is not None and flag is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(flag.set)

    async def join(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still running after ``timeout``."""
        await asyncio.to_thread(self._thread.join, timeout)
        return not self._thread.is_alive()


async def run_both(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    from choreo_dp.agent.agent import Agent
    from choreo_dp.cli.agent_cmd import agent_config, install_stop_handlers
    from choreo_dp.cli.operator_cmd import operator_config
    from choreo_dp.kube import ConfigError, KubeClient
    from choreo_dp.observability.health import Liveness

    op_cfg = operator_config(args)
    ag_cfg = agent_config(args)
    agent_liveness = Liveness("agent", max_silence=120.0)
    op_cfg.extra_liveness.append(agent_liveness)
    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    try:
        kube = await KubeClient.from_kubeconfig(args.kubeconfig)
    except ConfigError as exc:
        raise UsageError(f"kubeconfig: {exc}") from None
    operator = OperatorThread(op_cfg)
    operator_ended = asyncio.Event()
    try:
        operator.start(operator_ended)
        agent = asyncio.create_task(Agent(ag_cfg, kube, liveness=agent_liveness).run(stop), name="agent")
        ended = asyncio.create_task(operator_ended.wait(), name="operator-ended")
        try:
            await asyncio.wait([agent, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()  # one part ended (or we were cancelled): stop the other cleanly
            operator.stop()
            _, late = await asyncio.wait([agent], timeout=15)
            for task in (*late, ended):
                task.cancel()
            await asyncio.gather(agent, ended, return_exceptions=True)
            if not await operator.join(15):
                log.error("the operator did not stop within 15s")
        if not agent.cancelled() and agent.exception() is not None:
            raise agent.exception()  # type: ignore[misc]
        if operator.error is not None:
            raise operator.error
    finally:
        await kube.close()
    return 0


def handle(args: argparse.Namespace) -> int:
    from choreo_dp.cli.agent_cmd import agent_config
    from choreo_dp.cli.operator_cmd import operator_config
    from choreo_dp.observability.gc_tuning import tune_for_server
    from choreo_dp.observability.logging import configure_logging

    operator_config(args)  # flag errors before anything starts
    agent_config(args)
    configure_logging(args.log_format, args.log_level)
    tune_for_server("choreo_dp.agent.agent", "choreo_dp.operator")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_both(args))
    return 0


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "run",
        "operator and agent in one process (development)",
        "choreo-dp run --kubeconfig kubeconfig --control-plane ws://127.0.0.1:8443 --insecure "
        "--dataplane dev-1 --token-file dev-1.token",
    )
    add_agent_arguments(p)
    add_env_argument(p, "--kubeconfig", help="kubeconfig file")
    add_env_argument(p, "--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8081, help="/healthz port")
    add_env_argument(p, "--workers", type=int, default=16, help="concurrent operator reconciles")
    add_logging_arguments(p)
    p.set_defaults(handler=handle)
