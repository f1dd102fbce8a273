"""A TCP load balancer in front of control-plane replicas: HAProxy when it can be had, else our own.

HAProxy (Debian's package, installed with apt-get when missing and we are root) runs in TCP mode,
``leastconn`` (long-lived tunnels: the replica with the fewest connections takes the next one),
health-checked on ``/healthz`` over TLS every 500 ms, so a stopped replica leaves the rotation
within a second and a restarted one comes back; TLS passes through to the replicas untouched.

The fallback is a small asyncio proxy with the same policy (least connections among the backends
that accept a TCP connection), for machines where HAProxy cannot be installed and for tests, where
one more system package would be a dependency of the suite. ``kind`` says which ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Protocol

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 2.0
INSTALL_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Balancer(Protocol):
    kind: str
    port: int

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def up(self, index: int) -> bool:
        """Whether backend ``index`` is in the rotation (its health check passed)."""
        ...


def haproxy_binary(install: bool = True) -> str | None:
    """The haproxy binary, apt-get installing it when missing (root only); None when not to be had."""
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found or not install or os.geteuid() != 0:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "haproxy"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:
            return None
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


HAPROXY_CONFIG = """\
global
    maxconn 8000
    nbthread 1
    log stderr format raw local0 err
    stats socket {sock} mode 600 level user

defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    retries 3
    option redispatch

frontend controlplane
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
{servers}
"""


class HAProxy:
    kind = "haproxy"

    def __init__(self, binary: str, backends: list[int], workdir: Path) -> None:
        self.binary = binary
        self.backends = backends
        self.dir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} check check-ssl verify none inter 500ms fall 1 rise 2"
            for i, port in enumerate(self.backends)
        )
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers, sock=self.dir / "haproxy.sock"))
        check = await asyncio.create_subprocess_exec(
            self.binary, "-c", "-q", "-f", str(cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(check.communicate(), 30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {out.decode()[-2000:]}")
        log = (self.dir / "haproxy.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-db", "-f", str(cfg), stdout=log, stderr=log
        )
        log.close()
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # listening once a TCP connect succeeds
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
                w.close()
                return
            except OSError:
                if self.proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"haproxy did not start: {(self.dir / 'haproxy.log').read_text()[-2000:]}"
                    ) from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)  # hard stop: closes every connection at once
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def up(self, index: int) -> bool:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.dir / "haproxy.sock")), 5
        )
        try:
            writer.write(b"show stat\n")
            await writer.drain()
            text = (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()
        for line in text.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "replicas" and fields[1] == f"r{index}":
                return fields[17].startswith("UP")
        return False


class AsyncioBalancer:
    """Least connections among the backends that accept; a refused or timed-out connect tries the next."""

    kind = "asyncio"

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self.active = dict.fromkeys(backends, 0)
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def pid(self) -> int | None:
        return None  # in the caller's process

    async def up(self, index: int) -> bool:
        return True  # tries every backend at each connect: a live one is in rotation at once

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            # Ties go round robin; a backend counts a connection from the moment it is chosen, so a
            # burst of simultaneous accepts spreads instead of all picking the same idle backend.
            self._turn += 1
            n = len(self.backends)
            order = sorted(range(n), key=lambda i: (self.active[self.backends[i]], (i - self._turn) % n))
            for backend in (self.backends[i] for i in order):
                self.active[backend] += 1
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", backend), CONNECT_TIMEOUT
                    )
                except (OSError, TimeoutError):
                    self.active[backend] -= 1
                    continue
                self._writers.add(up_writer)
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                finally:
                    self.active[backend] -= 1
                    self._writers.discard(up_writer)
                    up_writer.transport.abort()
                return
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(CHUNK):
            dst.write(chunk)
            await dst.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        # One side ended: end the other so the peer sees the close (no half-open tunnels).
        with contextlib.suppress(OSError):
            dst.transport.abort()


def make_balancer(backends: list[int], workdir: Path, prefer: str = "haproxy") -> Balancer:
    """HAProxy when ``prefer`` says so and it is (or can be) installed, else the asyncio proxy."""
    if prefer == "haproxy":
        binary = haproxy_binary()
        if binary is not None:
            return HAProxy(binary, backends, workdir)
    return AsyncioBalancer(backends)
