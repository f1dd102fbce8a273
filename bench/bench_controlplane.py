"""The reference control plane as its own process (``choreo-dp control-plane serve``, TLS, loopback).

Figures:
- REST PUT throughput: ChoreoApp PUTs (each a new revision, committed with WAL + synchronous=FULL
  before the 202) over 8 kept-alive TLS connections, each sending its next PUT when the previous
  one is answered (100 warm-up PUTs first, not counted); p50/p99 latency, server and client CPU
  per PUT. Baseline: bare SQLite inserts with the same pragmas, ONE sequential committer, one
  commit per row (the floor any durable per-change store pays), measured right before and right
  after the PUTs; the ratio uses their mean. The comparison is the issue's: N concurrent writers
  sharing group commits against one writer paying one fsync per row.
- The same on PostgreSQL (``--db postgresql://``, a throwaway server started here as the tests do,
  fsync on): REST PUTs against bare psycopg inserts with one commit per row on the same server.
  ``--rest`` runs only these two.
- Store writes in process (no HTTP): 64 concurrent ``put_object`` calls sharing group commits, on
  SQLite and on PostgreSQL, against the same bare per-row commits: what the group commit gains
  where the commit, not the HTTP stack, is the bound.
- Idle agents: N raw WebSocket clients (quick: 100, ``--full``: 1,000), each its own registered
  dataplane, each doing hello + resync (empty inventory) and then heartbeats every second (10x the
  rate the server asks for, so the figure is pessimistic) for a fixed window. Server CPU seconds
  and RSS from /proc: the baseline is the same server idle with no agents over the same window
  (CPU) and just before the agents connect (RSS).
- Anti-entropy per heartbeat (in process): the cost of judging an agent's inventory summary when
  nothing differs, for 1,000 and 10,000 desired keys: the cached desired digest looked up and
  compared (what every heartbeat pays at an unchanged revision), against the baseline of decoding
  that heartbeat frame, measured in the same run; and the once-per-revision cost of computing the
  desired digest (sort + sha256 over every key), against the same baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trustme
import websockets

from choreo_cp.insync import AntiEntropy, DesiredDigests, desired_digest
from choreo_cp.store import DesiredState, Store
from choreo_wire import protocol as p

CLIENTS = 8
WARMUP_PUTS = 100
HEARTBEAT_EVERY = 1.0
CONNECT_CONCURRENCY = 50
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _baseline_inserts(path: Path, n: int) -> float:
    """Bare SQLite: one row per transaction, WAL + synchronous=FULL, like the store's commits."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL, r INTEGER NOT NULL)")
    payload = '{"project":"shop","type":"service","image":"ghcr.io/acme/x:1"}'
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (k, v, r) VALUES (?, ?, ?)", (f"app-{i}", payload, i))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


def _baseline_pg_inserts(url: str, n: int) -> float:
    """Bare psycopg: one row per transaction (autocommit off, COMMIT each), on the benchmark's server."""
    payload = '{"project":"shop","type":"service","image":"ghcr.io/acme/x:1"}'
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL, r BIGINT NOT NULL)")
        conn.commit()
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO t (k, v, r) VALUES (%s, %s, %s)", (f"app-{i}", payload, i))
            conn.commit()
        elapsed = time.perf_counter() - t0
    return n / elapsed


async def _store_puts(db: str, n: int, writers: int = 64) -> dict[str, float]:
    """In-process store writes: ``writers`` concurrent put_object calls until ``n`` are done."""
    async with Store(db) as store:
        await store.register_dataplane("bench")
        await store.put_object("bench", "Environment", "dev", "dev", {"registry": {"allowedPrefixes": ["*"]}})
        groups0 = store.writer.groups
        todo = iter(range(n))

        async def writer() -> None:
            for i in todo:
                spec = {"project": "shop", "type": "service", "image": f"ghcr.io/acme/x:{i}", "replicas": 2}
                await store.put_object("bench", "ChoreoApp", "dev", f"app-{i % 500}", spec)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - t0
        groups = store.writer.groups - groups0
    return {"per_s": n / elapsed, "writes_per_commit": n / max(1, groups)}


class ServerProcess:
    def __init__(self, workdir: Path, db: str | None = None) -> None:
        self.dir = workdir
        self.db = db or str(workdir / "cp.db")
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(24)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
        cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
        (workdir / "admin-token").write_text(self.token)
        self.ssl = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "choreo_dp.cli.main", "control-plane", "serve",
            "--listen", f"127.0.0.1:{self.port}", "--db", self.db,
            "--tls-cert", str(self.dir / "cert.pem"), "--tls-key", str(self.dir / "key.pem"),
            "--admin-token-file", str(self.dir / "admin-token"), "--log-level", "WARNING",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(verify=self.ssl) as http:
            while True:
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("control plane did not start")
                await asyncio.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class _Connection:
    """One kept-alive HTTP/1.1 connection over TLS, one request at a time.

    The load generator shares the two cores with the server, so what it spends per request is taken
    from the server: httpx spent about as much CPU per PUT as the server did (1.8 ms vs 1.9 ms,
    measured), which halved the figure. This client writes a prebuilt request and reads the answer
    by its Content-Length (the server always sends one), like wrk would.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, server: ServerProcess) -> _Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port, ssl=server.ssl), 30
        )
        head = f"Host: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.token}\r\n".encode()
        return cls(reader, writer, head)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            b"%s %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), self.head, len(body), body)
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length"
        )
        return status, await asyncio.wait_for(self.reader.readexactly(length), 30)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


def _app_body(i: int) -> bytes:
    spec = {"project": "shop", "type": "service", "image": f"ghcr.io/acme/x:{i}", "replicas": 2}
    return json.dumps(spec).encode()


async def _rest_throughput(server: ServerProcess, n: int, clients: int = CLIENTS) -> dict[str, Any]:
    """``clients`` connections each PUT in a loop (a new spec each time, so a new revision), after a
    warm-up of WARMUP_PUTS PUTs over the same connections (TLS handshakes, first-call costs) that
    the figure leaves out."""
    conns = [await _Connection.open(server) for _ in range(clients)]
    try:
        status, text = await conns[0].request("PUT", "/api/v1/dataplanes/bench")
        assert status in (200, 201), (status, text)
        env = json.dumps({"spec": {"registry": {"allowedPrefixes": ["*"]}}}).encode()
        status, text = await conns[0].request("PUT", "/api/v1/dataplanes/bench/environments/dev", env)
        assert status == 202, (status, text)
        bodies = [_app_body(i) for i in range(WARMUP_PUTS + n)]
        latencies: list[float] = []

        async def put(conn: _Connection, i: int) -> None:
            t = time.perf_counter()
            status, text = await conn.request(
                "PUT", f"/api/v1/dataplanes/bench/environments/dev/apps/app-{i % 500}", bodies[i]
            )
            latencies.append(time.perf_counter() - t)
            if status != 202:
                raise RuntimeError(f"PUT -> {status} {text[:200]!r}")

        async def run(first: int, count: int) -> None:
            todo = iter(range(first, first + count))

            async def worker(conn: _Connection) -> None:
                for i in todo:
                    await put(conn, i)

            await asyncio.gather(*(worker(c) for c in conns))

        await run(0, WARMUP_PUTS)
        latencies.clear()
        cpu0, client0 = _cpu_seconds(server.pid), time.process_time()
        t0 = time.perf_counter()
        await run(WARMUP_PUTS, n)
        elapsed = time.perf_counter() - t0
        server_cpu = _cpu_seconds(server.pid) - cpu0
        client_cpu = time.process_time() - client0
        status, text = await conns[0].request("GET", "/api/v1/dataplanes/bench")
        final = json.loads(text)
    finally:
        for conn in conns:
            await conn.close()
    # the Environment is revision 1, every PUT one more
    assert final["revision"] == WARMUP_PUTS + n + 1, final
    latencies.sort()
    return {
        "rest_put_per_s": round(n / elapsed, 1),
        "rest_put_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "rest_put_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "rest_server_cpu_ms_per_put": round(server_cpu / n * 1000, 2),
        "rest_client_cpu_ms_per_put": round(client_cpu / n * 1000, 2),
    }


async def _idle_agent(
    server: ServerProcess,
    dp: str,
    token: str,
    ready: asyncio.Event,
    stop: asyncio.Event,
    gate: asyncio.Semaphore,
) -> int:
    """hello -> welcome -> snapshot.begin -> empty inventory -> snapshot.end -> heartbeats."""
    seq = p.Sequencer()
    async with gate:
        ws = await websockets.connect(
            f"wss://127.0.0.1:{server.port}{p.TUNNEL_PATH}",
            subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {token}"},
            ssl=server.ssl,
            open_timeout=30,
            ping_interval=None,  # the server pings; the figure is about the server's cost
        )
        await ws.send(seq.encode(p.Hello(dataplane_id=dp, versions=[1])))
        welcome = p.decode(await asyncio.wait_for(ws.recv(), 30))
        assert welcome.type == "welcome", welcome
        begin = p.decode(await asyncio.wait_for(ws.recv(), 30))
        assert begin.type == "snapshot.begin", begin
        await ws.send(seq.encode(p.Inventory(chunk=0, last=True, buckets=[], items={})))
        end = p.decode(await asyncio.wait_for(ws.recv(), 30))
        assert end.type == "snapshot.end", end
    ready.set()
    echoes = 0
    try:
        while not stop.is_set():
            await ws.send(seq.encode(p.Heartbeat(time="now")))
            echo = p.decode(await asyncio.wait_for(ws.recv(), 30))
            echoes += echo.type == "heartbeat"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_EVERY)
    finally:
        await ws.close()
    return echoes


async def _idle_agents(server: ServerProcess, n: int, window: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.token}"}
    tokens: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, verify=server.ssl, timeout=30) as http:
        for i in range(n):
            r = await http.put(f"/api/v1/dataplanes/idle-{i}")
            tokens[f"idle-{i}"] = r.json()["token"]
    # baseline: the same server, no agents, same window
    cpu0 = _cpu_seconds(server.pid)
    await asyncio.sleep(window)
    idle_cpu = _cpu_seconds(server.pid) - cpu0
    rss_before = _rss_mib(server.pid)

    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    readies = [asyncio.Event() for _ in range(n)]
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(_idle_agent(server, dp, tok, readies[i], stop, gate))
        for i, (dp, tok) in enumerate(tokens.items())
    ]
    waiting = asyncio.gather(*(r.wait() for r in readies))
    # all agents synced, or one of them failed (they only return after ``stop``), bounded
    watched: set[asyncio.Future[Any]] = {asyncio.ensure_future(waiting), *tasks}
    await asyncio.wait(watched, timeout=180, return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed or not all(r.is_set() for r in readies):
        stop.set()
        first = failed[0].exception() if failed else "timeout"
        raise RuntimeError(
            f"{len(failed)} agents failed, {sum(not r.is_set() for r in readies)} not synced: {first!r}"
        )
    connect_seconds = time.perf_counter() - t0
    cpu1 = _cpu_seconds(server.pid)
    await asyncio.sleep(window)
    busy_cpu = _cpu_seconds(server.pid) - cpu1
    rss_after = _rss_mib(server.pid)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, verify=server.ssl, timeout=30) as http:
        connected = 0
        for dp in tokens:
            connected += bool((await http.get(f"/api/v1/dataplanes/{dp}")).json()["connected"])
    stop.set()
    echoes = sum(await asyncio.gather(*tasks))
    return {
        "agents": n,
        "agents_connected": connected,
        "agents_connect_all_s": round(connect_seconds, 2),
        "agents_window_s": window,
        "agents_heartbeats_echoed": echoes,
        "agents_server_cpu_s": round(busy_cpu, 2),
        "agents_server_cpu_pct_of_core": round(100 * busy_cpu / window, 1),
        "baseline_idle_server_cpu_s": round(idle_cpu, 2),
        "agents_server_rss_mib": round(rss_after, 1),
        "baseline_server_rss_mib": round(rss_before, 1),
        "agents_rss_kib_per_agent": round((rss_after - rss_before) * 1024 / n, 1),
    }


def _per_call_us(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


class _OneState:
    """What DesiredDigests reads from the store, without a store."""

    def __init__(self, state: DesiredState) -> None:
        self.state = state

    async def desired_state(self, dp: str) -> DesiredState:
        return self.state


async def _anti_entropy(keys: int, rounds: int) -> dict[str, Any]:
    hashes = {p.app_key("env", f"app-{i:05d}"): secrets.token_hex(32) for i in range(keys)}
    state = DesiredState("epoch", 7, hashes, {})
    digests = DesiredDigests(_OneState(state))  # type: ignore[arg-type]
    await digests.at("dp", "epoch", 7)  # warm: computed once per revision
    summary = p.InventorySummary(count=keys, digest=p.inventory_digest(hashes), revision=7)
    frame = p.encode(p.Heartbeat(time="2030-01-01T00:00:00Z", applied_revision=7, inventory=summary), seq=1)
    judge = AntiEntropy()

    def compare() -> None:
        desired = digests.cached("dp", "epoch", 7)
        assert judge.observe(summary, 7, desired) == "match"

    decode_us = _per_call_us(lambda: p.decode(frame), rounds)
    compare_us = _per_call_us(compare, rounds)
    compute_us = _per_call_us(lambda: desired_digest(state), max(3, rounds // 2000))
    return {
        f"anti_entropy_{keys}_keys_compare_us": round(compare_us, 2),
        f"anti_entropy_{keys}_keys_heartbeat_decode_us": round(decode_us, 2),
        f"anti_entropy_{keys}_keys_compare_vs_decode_ratio": round(compare_us / decode_us, 3),
        f"anti_entropy_{keys}_keys_digest_per_revision_ms": round(compute_us / 1000, 2),
        f"anti_entropy_{keys}_keys_digest_vs_decode_ratio": round(compute_us / decode_us, 1),
    }


def _bracketed(before: float, after: float) -> dict[str, float]:
    """A bare baseline measured right before and right after the runs it is compared with.

    One sequential committer's commits/s is the fsync latency of the moment, and on a shared
    machine that moves several-fold within a minute (854 then 6,040 /s in consecutive runs here);
    the ratios use the mean of the two, and both are reported.
    """
    return {"before": round(before, 1), "after": round(after, 1), "mean": round((before + after) / 2, 1)}


async def _postgres_figures(workdir: Path, puts: int, *, store_too: bool = True) -> dict[str, Any]:
    """REST and store writes on PostgreSQL against bare psycopg commits, one throwaway server."""
    from tests.fixtures.postgres import running_postgres

    with running_postgres() as pg:
        before = _baseline_pg_inserts(pg.database(), puts)
        store = await _store_puts(pg.database(), puts) if store_too else None
        server = ServerProcess(workdir, db=pg.database())
        await server.start()
        try:
            rest = await _rest_throughput(server, puts)
        finally:
            await server.stop()
        baseline = _bracketed(before, _baseline_pg_inserts(pg.database(), puts))
    figures = {
        "pg_rest_put_per_s": rest["rest_put_per_s"],
        "pg_rest_put_p50_ms": rest["rest_put_p50_ms"],
        "pg_rest_put_p99_ms": rest["rest_put_p99_ms"],
        "pg_rest_server_cpu_ms_per_put": rest["rest_server_cpu_ms_per_put"],
        "pg_rest_client_cpu_ms_per_put": rest["rest_client_cpu_ms_per_put"],
        "baseline_pg_insert_commit_per_s": baseline["mean"],
        "baseline_pg_insert_commit_per_s_before_after": [baseline["before"], baseline["after"]],
        "pg_rest_put_vs_pg_ratio": round(rest["rest_put_per_s"] / baseline["mean"], 3),
    }
    if store is not None:
        figures |= {
            "store_pg_put_per_s": round(store["per_s"], 1),
            "store_pg_writes_per_commit": round(store["writes_per_commit"], 1),
            "store_put_vs_pg_ratio": round(store["per_s"] / baseline["mean"], 3),
        }
    return figures


async def _sqlite_rest(workdir: Path, server: ServerProcess, puts: int) -> dict[str, Any]:
    """REST PUTs on the SQLite-backed ``server``, bracketed by bare SQLite commits."""
    before = _baseline_inserts(workdir / "baseline-before.db", puts)
    rest = await _rest_throughput(server, puts)
    baseline = _bracketed(before, _baseline_inserts(workdir / "baseline-after.db", puts))
    return {
        **rest,
        "rest_clients": CLIENTS,
        "baseline_sqlite_insert_commit_per_s": baseline["mean"],
        "baseline_sqlite_insert_commit_per_s_before_after": [baseline["before"], baseline["after"]],
        "rest_put_vs_sqlite_ratio": round(rest["rest_put_per_s"] / baseline["mean"], 3),
    }


async def run(quick: bool) -> dict[str, Any]:
    puts = 1000 if quick else 5000
    agents = 100 if quick else 1000
    window = 10.0 if quick else 30.0
    anti_entropy = {**await _anti_entropy(1000, 20_000), **await _anti_entropy(10_000, 20_000)}
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        workdir = Path(tmp)
        store_baseline = _baseline_inserts(workdir / "baseline.db", puts)
        store_lite = await _store_puts(str(workdir / "store.db"), puts)
        server = ServerProcess(workdir)
        await server.start()
        try:
            rest = await _sqlite_rest(workdir, server, puts)
            idle = await _idle_agents(server, agents, window)
        finally:
            await server.stop()
        pg = await _postgres_figures(workdir, puts)
    return {
        "rest_puts": puts,
        **rest,
        "baseline_sqlite_store_run_per_s": round(store_baseline, 1),
        "store_sqlite_put_per_s": round(store_lite["per_s"], 1),
        "store_sqlite_writes_per_commit": round(store_lite["writes_per_commit"], 1),
        "store_put_vs_sqlite_ratio": round(store_lite["per_s"] / store_baseline, 3),
        **pg,
        **idle,
        **anti_entropy,
    }


async def run_rest(quick: bool) -> dict[str, Any]:
    """Only the REST PUT figures, on SQLite and PostgreSQL (``python -m bench.bench_controlplane --rest``)."""
    puts = 1000 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        workdir = Path(tmp)
        server = ServerProcess(workdir)
        await server.start()
        try:
            rest = await _sqlite_rest(workdir, server, puts)
        finally:
            await server.stop()
        pg = await _postgres_figures(workdir, puts, store_too=False)
    return {"rest_puts": puts, **rest, **pg}


if __name__ == "__main__":
    main = run_rest if "--rest" in sys.argv else run
    print(json.dumps(asyncio.run(main(quick="--full" not in sys.argv)), indent=2))
