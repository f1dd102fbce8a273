"""``choreo-dp run`` (operator and agent in one process) drives the sandbox's demo to Ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from choreo_sandbox.demo import KUBE_MODES, Sandbox


class RunVerbSandbox(Sandbox):
    """The sandbox, with the operator and the agent replaced by one ``choreo-dp run`` process."""

    async def _start_operator(self) -> None:
        return None

    async def _start_agent(self) -> None:
        await self.children.start("run", ["run", *self.agent_argv()], env=self.operator_env())
        await self.wait_connected("run")


@pytest.mark.parametrize("kube", KUBE_MODES)
async def test_run_verb_reconciles_and_reports(kube: str, tmp_path: Path) -> None:
    lines: list[str] = []
    sandbox = RunVerbSandbox(tmp_path / "run", say=lines.append, ready_timeout=60, kube_mode=kube)
    try:
        await sandbox.start()
        assert list(sandbox.children.pids) == [sandbox.api_child, "control-plane", "keyvault", "run"]
        assert any("Ready in" in line for line in lines), lines
        table = await sandbox.kubectl_table()
        assert "hello" in table and "Ready" in table, table
    finally:
        await sandbox.stop()
    assert sandbox.children.pids == {}
    assert not (tmp_path / "run" / "cluster.tmp").exists()
