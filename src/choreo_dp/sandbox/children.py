"""Child processes of the sandbox: started with their output in ``DIR/<name>.log``, stopped cleanly.

A previous run in the same directory may have been killed without cleanup; its process ids are
kept in ``DIR/sandbox.pids`` so the next run can stop leftovers before it starts anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import IO


class StepFailed(Exception):
    def __init__(self, step: str, detail: str, log: Path | None = None) -> None:
        where = f" (log: {log})" if log else ""
        super().__init__(f"{step} failed: {detail}{where}")
        self.step = step
        self.log = log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"choreo" in cmdline


class Children:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid_file = directory / "sandbox.pids"
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    async def stop_leftovers(self) -> list[int]:
        """Stop processes a previous, uncleanly ended run left behind."""
        try:
            pids = [int(p) for p in json.loads(self.pid_file.read_text()).values()]
        except (OSError, ValueError):
            return []
        stopped = [pid for pid in pids if _is_ours(pid)]
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not any(_is_ours(pid) for pid in stopped):
                break
            await asyncio.sleep(0.1)
        for pid in stopped:
            if _is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    async def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.log_path(name).open("wb")
        self._logs[name] = log
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "choreo_dp.cli.main",
            *argv,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # Ctrl-C in the terminal reaches only us; we stop children in order.
        )
        self._procs[name] = proc
        self.pid_file.write_text(json.dumps({n: p.pid for n, p in self._procs.items()}))

    def check_alive(self, name: str, step: str) -> None:
        proc = self._procs[name]
        if proc.returncode is not None:
            raise StepFailed(step, f"{name} exited with code {proc.returncode}", self.log_path(name))

    async def wait_for_log(self, name: str, pattern: str, timeout: float, step: str) -> re.Match[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        regex = re.compile(pattern)
        while loop.time() < deadline:
            text = await asyncio.to_thread(self.log_path(name).read_text, errors="replace")
            match = regex.search(text)
            if match:
                return match
            self.check_alive(name, step)
            await asyncio.sleep(0.1)
        raise StepFailed(step, f"timed out after {timeout:.0f}s waiting for {name}", self.log_path(name))

    async def stop_all(self, timeout: float = 10.0) -> None:
        for name in reversed(list(self._procs)):
            proc = self._procs[name]
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self._logs[name].close()
        self._procs.clear()
        self.pid_file.unlink(missing_ok=True)

    @property
    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items()}
