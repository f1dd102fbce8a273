"""Child processes of the sandbox: started with their output in ``DIR/<name>.log``, stopped cleanly.

One sandbox per directory: ``DirLock`` holds ``DIR/sandbox.lock`` (an ``flock``, released by the
kernel whenever the holder dies, however it dies) for the sandbox's whole life, so a second
sandbox on the same directory is refused instead of fighting the first over its files.

A previous run in the same directory may have been killed without cleanup; its process ids are
kept in ``DIR/sandbox.pids`` so the next run (once it holds the lock, so they cannot belong to a
running sandbox) can stop leftovers before it starts anew.  Processes a child started in their
own sessions (the real cluster's etcd, kube-apiserver, ...) are found by the scratch directory
they run in, ``DIR/<name>.tmp`` (the child's ``TMPDIR``), and that directory is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class StepFailed(Exception):
    def __init__(self, step: str, detail: str, log: Path | None = None) -> None:
        where = f" (log: {log})" if log else ""
        super().__init__(f"{step} failed: {detail}{where}")
        self.step = step
        self.log = log


class DirInUse(Exception):
    """Another running sandbox holds the directory."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _names(pid: int, directory: Path) -> bool:
    """Whether process ``pid``'s command line names a path inside ``directory``.

    Every child of a sandbox does (its kubeconfig, database or token file is in DIR), so a pid
    recorded in ``sandbox.pids`` that was since reused by an unrelated process is left alone."""
    return names_directory(_cmdline(pid).split(b"\0"), directory)


def names_directory(args: list[bytes], directory: Path) -> bool:
    """Whether one of ``args`` is ``directory`` itself (``--dir D``, ``--dir=D``) or a path in it.

    The directory itself counts: the Key Vault part is started with ``--dir D`` and names nothing
    inside it, and was left running by a killed sandbox because only paths inside were matched."""
    d = os.fsencode(str(directory))
    return any(a == d or a.endswith(b"=" + d) or d + b"/" in a for a in args)


def _running_under(directory: Path) -> list[int]:
    """Processes whose command line names a path inside ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _names(int(entry.name), directory):
            found.append(int(entry.name))
    return found


async def _stop_running_under(directory: Path) -> list[int]:
    """Stop every process still running in ``directory``, then remove it."""
    pids = _running_under(directory)
    await _terminate(pids, lambda pid: pid in _running_under(directory), grace=15.0)
    await asyncio.to_thread(shutil.rmtree, directory, True)
    return pids


async def _terminate(pids: list[int], is_alive: Callable[[int], bool], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while any(is_alive(pid) for pid in pids):
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.1)  # not our children: nothing to wait on but /proc
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class DirLock:
    """``DIR/sandbox.lock``: held while a sandbox runs in DIR (released by the kernel when it dies)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "sandbox.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DirInUse(
                f"{self.path.parent} is used by another running sandbox (pid {holder}); stop it with "
                f"Ctrl-C in its terminal or `kill {holder}`, or pass another --dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        # The file stays: unlinking it would let a third sandbox lock a fresh file while a
        # second still waits on the old inode.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


@dataclass
class Spec:
    """How a child was started, to start it again the same way."""

    argv: list[str]
    env: dict[str, str]
    stop_timeout: float
    scratch: Path | None


class Children:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid_file = directory / "sandbox.pids"
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._specs: dict[str, Spec] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._log_start: dict[str, int] = {}

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def scratch_path(self, name: str) -> Path:
        return self.directory / f"{name}.tmp"

    async def stop_leftovers(self) -> list[int]:
        """Stop processes a previous, uncleanly ended run left behind (call with the lock held)."""
        try:
            pids = [int(p) for p in json.loads(self.pid_file.read_text()).values()]
        except (OSError, ValueError):
            pids = []

        def ours(pid: int) -> bool:
            return _names(pid, self.directory)

        stopped = [pid for pid in pids if ours(pid)]
        # A child stopping cleanly stops what it started; give it the time a real cluster needs.
        await _terminate(stopped, ours, grace=60.0)
        # Grandchildren whose parent was killed outright: they still run in a scratch directory.
        for scratch in sorted(self.directory.glob("*.tmp")):
            if scratch.is_dir():
                stopped += await _stop_running_under(scratch)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    async def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        stop_timeout: float = 10.0,
        scratch: bool = False,
    ) -> None:
        """Start ``choreo-dp ARGV`` as child ``name``.

        ``scratch``: the child gets its own ``TMPDIR`` (``DIR/<name>.tmp``), emptied before it
        starts and removed after it stops, so nothing it keeps there outlives the sandbox.
        """
        spec = Spec(list(argv), dict(env or {}), stop_timeout, self.scratch_path(name) if scratch else None)
        self._specs[name] = spec
        self.log_path(name).unlink(missing_ok=True)
        await self._spawn(name)

    async def restart(self, name: str) -> None:
        """Start child ``name`` again as it was started; its log continues in the same file."""
        await self.stop(name)
        await self._spawn(name)

    async def _spawn(self, name: str) -> None:
        spec = self._specs[name]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        if spec.scratch is not None:
            await asyncio.to_thread(shutil.rmtree, spec.scratch, True)
            spec.scratch.mkdir(parents=True)
            env["TMPDIR"] = str(spec.scratch)
        log = self.log_path(name).open("ab")
        self._log_start[name] = log.tell()
        self._logs[name] = log
        spawning = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "choreo_dp.cli.main",
                *spec.argv,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches only us; we stop children in order.
            )
        )
        try:
            proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Interrupted while the process was being created: it may exist all the same, and
            # whatever exists must be recorded, or nothing would ever stop it.
            with contextlib.suppress(OSError):
                self._record(name, await spawning)
            raise
        self._record(name, proc)

    def _record(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self._procs[name] = proc
        self.pid_file.write_text(json.dumps({n: p.pid for n, p in self._procs.items()}))

    def returncode(self, name: str) -> int | None:
        return self._procs[name].returncode

    def log_tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` non-empty lines child ``name`` logged (what it said before dying)."""
        try:
            with self.log_path(name).open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                data = log.read()
        except OSError:
            return []
        text = [line.rstrip() for line in data.decode(errors="replace").splitlines() if line.strip()]
        return text[-lines:]

    def check_alive(self, name: str, step: str) -> None:
        code = self.returncode(name)
        if code is not None:
            raise StepFailed(step, f"{name} exited with code {code}", self.log_path(name))

    async def wait_for_log(self, name: str, pattern: str, timeout: float, step: str) -> re.Match[str]:
        """Wait until what child ``name`` logged since it was (re)started matches ``pattern``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        regex = re.compile(pattern)
        while loop.time() < deadline:
            data = await asyncio.to_thread(self.log_path(name).read_bytes)
            match = regex.search(data[self._log_start[name] :].decode(errors="replace"))
            if match:
                return match
            self.check_alive(name, step)
            await asyncio.sleep(0.1)
        raise StepFailed(step, f"timed out after {timeout:.0f}s waiting for {name}", self.log_path(name))

    async def stop(self, name: str) -> None:
        """Stop child ``name`` (it can be restarted later)."""
        proc, spec = self._procs[name], self._specs[name]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), spec.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log = self._logs.pop(name, None)
        if log is not None:
            log.close()
        if spec.scratch is not None:
            # Anything the child started and did not stop (it was killed) runs in its scratch dir.
            await _stop_running_under(spec.scratch)

    async def stop_all(self) -> None:
        for name in reversed(list(self._procs)):
            await self.stop(name)
        self._procs.clear()
        self._specs.clear()
        self.pid_file.unlink(missing_ok=True)

    @property
    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items()}
