"""``cp logs``, ``cp events``, ``cp describe app``, ``cp audit`` and ``cp get --watch`` against a small
fake of the control plane's REST shapes (docs: /work/briefs/i16_common.md, src/choreo_cp/api/observe.py):
the CLI's job is printing what arrives as it arrives and ending with the right exit code and one line."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from queue import Empty, Queue
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from choreo_dp.cli.main import main

APP = "/api/v1/dataplanes/edge-1/environments/dev/apps/orders"
TARGET = ["orders", "--environment", "dev", "--dataplane", "edge-1"]
Handler = Callable[["Request"], None]


class Request(BaseHTTPRequestHandler):
    routes: dict[str, Handler] = {}
    seen: list[tuple[str, dict[str, list[str]], str]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.seen.append((url.path, parse_qs(url.query), self.headers.get("Accept", "")))
        handler = self.routes.get(url.path)
        if handler is None:
            self.json(404, {"detail": f"no such thing: {url.path}"})
            return
        handler(self)

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def record(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def finish_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Request]]:
    routes: dict[str, Handler] = {}
    seen: list[tuple[str, dict[str, list[str]], str]] = []
    handler = type("Fake", (Request,), {"routes": routes, "seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CHOREO_DP_CP_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", "admin-token")
    monkeypatch.delenv("CHOREO_DP_DATAPLANE", raising=False)
    try:
        yield handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def stream(records: list[dict[str, Any]]) -> Handler:
    def handle(req: Request) -> None:
        req.start_stream()
        for r in records:
            req.record(r)
        req.finish_stream()

    return handle


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["cp", *argv])
    except SystemExit as exc:  # usage errors: the parser exits 2 after its one line
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- logs ----------------------------------------------------------------------------------------
def test_logs_print_lines_and_pass_the_flags(
    server: type[Request], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["orders-1/app: started", "orders-2/app: listening on :8080"]
    server.routes[f"{APP}/logs"] = stream(
        [*({"type": "line", "text": t} for t in lines), {"type": "end", "code": "done", "message": ""}]
    )
    argv = [
        "logs",
        *TARGET,
        "--since",
        "10m",
        "--tail",
        "5",
        "--pod",
        "orders-1",
        "--container",
        "app",
        "--previous",
    ]
    code, out, err = cli(argv, capsys)
    assert (code, out.splitlines(), err) == (0, lines, "")
    path, query, accept = server.seen[-1]
    assert path == f"{APP}/logs" and accept == "application/x-ndjson"
    assert query == {
        "since": ["10m"],
        "tail": ["5"],
        "pod": ["orders-1"],
        "container": ["app"],
        "previous": ["true"],
    }


def test_logs_follow_prints_each_line_as_it_arrives(
    server: type[Request], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line is sent only once the first is on stdout: nothing waits for the end."""
    printed: Queue[str] = Queue(maxsize=100)
    first_seen = threading.Event()

    class Out(io.StringIO):
        def write(self, s: str) -> int:
            for line in s.splitlines():
                printed.put_nowait(line)
            return len(s)

    def handle(req: Request) -> None:
        req.start_stream()
        req.record({"type": "line", "text": "orders-1/app: one"})
        assert first_seen.wait(10), "the CLI did not print the first line before the stream ended"
        req.record({"type": "line", "text": "orders-1/app: two"})
        req.record({"type": "end", "code": "done"})
        req.finish_stream()

    server.routes[f"{APP}/logs"] = handle
    monkeypatch.setattr("sys.stdout", Out())
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", main(["cp", "logs", *TARGET, "-f"])))
    runner.start()
    try:
        assert printed.get(timeout=10) == "orders-1/app: one"
    except Empty:
        pytest.fail("the first line was not printed while the stream was open")
    first_seen.set()
    runner.join(10)
    assert not runner.is_alive()
    assert result["code"] == 0 and printed.get(timeout=1) == "orders-1/app: two"
    assert server.seen[-1][1]["follow"] == ["true"]


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (
            {"type": "end", "code": "limit", "message": "byte limit of 10 MiB reached"},
            "logs ended: limit: byte limit",
        ),
        (
            {"type": "end", "code": "disconnected", "message": "data plane went away"},
            "disconnected: data plane",
        ),
        (None, "logs ended: disconnected: the stream ended without an end record"),
    ],
)
def test_logs_abnormal_end_is_one_line_and_exit_1(
    server: type[Request], capsys: pytest.CaptureFixture[str], end: dict[str, Any] | None, expected: str
) -> None:
    records: list[dict[str, Any]] = [{"type": "line", "text": "orders-1/app: before"}]
    server.routes[f"{APP}/logs"] = stream(records + ([end] if end else []))
    code, out, err = cli(["logs", *TARGET], capsys)
    assert code == 1 and out == "orders-1/app: before\n"
    assert err.startswith("choreo-dp cp: ") and expected in err and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (403, {"detail": "disabled: the data plane switched observability off"}, {}, "403: disabled: the data plane"),
        (429, {"detail": "too many streams for edge-1"}, {"Retry-After": "7"}, "429: too many streams for edge-1 (retry after 7s)"),
        (503, {"detail": "dataplane edge-1 is not connected"}, {"Retry-After": "5"}, "not connected (retry after 5s)"),
        (404, {"detail": "app orders not found"}, {}, "404: app orders not found"),
    ],
)  # fmt: skip
def test_logs_refused_before_streaming_is_one_line(
    server: type[Request],
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    expected: str,
) -> None:
    server.routes[f"{APP}/logs"] = lambda req: req.json(status, body, headers)
    code, out, err = cli(["logs", *TARGET, "-f"], capsys)
    assert (code, out) == (1, "")
    assert expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["logs", "orders", "--environment", "dev"], "--dataplane"),
        (["logs", *TARGET, "--since", "ten minutes"], "invalid duration"),
        (["logs", *TARGET, "--tail", "-3"], "at least 0"),
        (["logs", *TARGET, "--tail", "many"], "whole number"),
        (["events", "orders", "--dataplane", "edge-1"], "--environment"),
        (["describe", "pod", *TARGET], "invalid choice"),
        (["audit", "--limit", "0"], "1 to 1000"),
        (["get", "apps", "--watch", "-o", "json"], "--watch prints tables"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    server: type[Request], capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == "" and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert not server.seen, "nothing is sent on bad input"


def test_unreachable_control_plane_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CHOREO_DP_CP_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", "t")
    code, _, err = cli(["logs", *TARGET], capsys)
    assert code == 1 and "cannot reach the control plane" in err and err.count("\n") == 1, err


# -- events --------------------------------------------------------------------------------------
EVENTS = [
    {"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container app",
     "object": "Pod/orders-1", "count": 4, "firstTimestamp": "2024-01-01T00:00:00Z",
     "lastTimestamp": "2024-01-01T00:05:00Z"},
    {"type": "Normal", "reason": "ScalingReplicaSet", "message": "Scaled up replica set orders-7d9c to 2",
     "object": "Deployment/orders", "count": 1, "firstTimestamp": "2024-01-01T00:00:00Z",
     "lastTimestamp": "2024-01-01T00:00:00Z"},
]  # fmt: skip


def test_events_table_is_kubectl_like(server: type[Request], capsys: pytest.CaptureFixture[str]) -> None:
    server.routes[f"{APP}/events"] = lambda req: req.json(200, EVENTS)
    code, out, err = cli(["events", *TARGET], capsys)
    rows = out.splitlines()
    assert code == 0 and err == ""
    assert rows[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "(x4)" in rows[1] and "Warning" in rows[1] and "Pod/orders-1" in rows[1]
    assert rows[1].endswith("Back-off restarting failed container app")
    assert "Deployment/orders" in rows[2] and "(x" not in rows[2]


def test_events_watch_prints_rows_until_the_end(
    server: type[Request], capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes[f"{APP}/events"] = stream(
        [*({"type": "object", "object": e} for e in EVENTS), {"type": "end", "code": "cancelled"}]
    )
    code, out, _ = cli(["events", *TARGET, "-w"], capsys)
    rows = out.splitlines()
    assert code == 0 and len(rows) == 3 and "BackOff" in rows[1] and "ScalingReplicaSet" in rows[2]
    assert server.seen[-1][1] == {"watch": ["true"]}


def test_events_watch_ended_by_the_data_plane(
    server: type[Request], capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes[f"{APP}/events"] = stream(
        [{"type": "end", "code": "disconnected", "message": "tunnel closed"}]
    )
    code, _, err = cli(["events", *TARGET, "-w"], capsys)
    assert code == 1 and err == "choreo-dp cp: events ended: disconnected: tunnel closed\n"


# -- describe ------------------------------------------------------------------------------------
VIEW = {
    "name": "orders", "revision": 7, "observedRevision": 7, "phase": "Degraded",
    "spec": {"type": "service", "project": "shop", "image": "ghcr.io/acme/orders:1.2", "replicas": 2,
             "endpoints": [{"name": "api", "port": 8080, "visibility": "Public"}]},
    "status": {"phase": "Degraded", "ready": "1/2", "conditions": [
        {"type": "Ready", "status": "False", "reason": "CrashLoopBackOff", "message": "orders-1 restarting"}]},
}  # fmt: skip
LIVE = {
    "app": "ChoreoApp/dev/orders", "observedAt": "2024-01-01T00:00:00Z",
    "objects": [
        {"kind": "Deployment", "name": "orders", "ready": "1/2", "restarts": None, "age": 3600, "status": "Progressing"},
        {"kind": "Pod", "name": "orders-1", "ready": False, "restarts": 4, "age": 300, "status": "Running",
         "reason": "CrashLoopBackOff", "node": "kwok-node-0"},
    ],
}  # fmt: skip


def test_describe_app_is_one_screen(server: type[Request], capsys: pytest.CaptureFixture[str]) -> None:
    server.routes[APP] = lambda req: req.json(200, VIEW)
    server.routes[f"{APP}/live"] = lambda req: req.json(200, LIVE)
    server.routes[f"{APP}/events"] = lambda req: req.json(200, EVENTS)
    code, out, err = cli(["describe", "app", *TARGET], capsys)
    assert code == 0 and err == ""
    text = out.splitlines()
    assert len(text) < 40, "one screen"
    fields = dict(line.split(":", 1) for line in text[: text.index("")])
    assert fields["Image"].strip() == "ghcr.io/acme/orders:1.2" and fields["Revision"].strip() == "7"
    assert (
        fields["Phase"].strip() == "Degraded" and "CrashLoopBackOff: orders-1 restarting" in fields["Reason"]
    )
    assert fields["Endpoints"].strip() == "api 8080/Public"
    pod = next(line for line in text if "orders-1" in line and "Pod" in line)
    assert pod.split()[:5] == ["Pod", "orders-1", "false", "Running", "4"] and "kwok-node-0" in pod
    assert any("BackOff" in line for line in text[text.index("Events:") :])


def test_describe_app_shows_why_live_state_is_missing(
    server: type[Request], capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes[APP] = lambda req: req.json(200, VIEW)
    refused = {"detail": "disabled: the data plane switched observability off"}
    server.routes[f"{APP}/live"] = lambda req: req.json(403, refused)
    server.routes[f"{APP}/events"] = lambda req: req.json(
        503, {"detail": "not connected"}, {"Retry-After": "5"}
    )
    code, out, _ = cli(["describe", "app", *TARGET], capsys)
    assert code == 0
    assert "unavailable: 403: disabled: the data plane switched observability off" in out
    assert "unavailable: 503: not connected" in out


def test_describe_unknown_app_is_one_line(server: type[Request], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["describe", "app", *TARGET], capsys)
    assert (code, out) == (1, "") and err.startswith("choreo-dp cp: 404") and err.count("\n") == 1


# -- audit ---------------------------------------------------------------------------------------
def test_audit_lists_records(server: type[Request], capsys: pytest.CaptureFixture[str]) -> None:
    record = {"at": "2024-01-01T00:00:00Z", "who": "admin", "dataplane": "edge-1", "app": "ChoreoApp/dev/orders",
              "kind": "logs", "params": {"follow": True}, "bytes": 2048, "code": "done", "durationSeconds": 1.25}  # fmt: skip
    server.routes["/api/v1/audit"] = lambda req: req.json(200, {"items": [record]})
    code, out, _ = cli(["audit", "--dataplane", "edge-1", "--limit", "5"], capsys)
    header, row = out.splitlines()
    assert code == 0 and header.split() == [
        "AT",
        "WHO",
        "DATAPLANE",
        "APP",
        "KIND",
        "BYTES",
        "CODE",
        "DURATION",
    ]
    assert row.split() == [
        "2024-01-01T00:00:00Z",
        "admin",
        "edge-1",
        "ChoreoApp/dev/orders",
        "logs",
        "2048",
        "done",
        "1.2s",
    ]
    assert server.seen[-1][1] == {"dataplane": ["edge-1"], "limit": ["5"]}


# -- get --watch ---------------------------------------------------------------------------------
def test_get_watch_reprints_only_changed_rows(
    server: type[Request], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    polls = [
        [
            {"id": "edge-1", "connected": True, "revision": 1},
            {"id": "edge-2", "connected": True, "revision": 4},
        ],
        [
            {"id": "edge-1", "connected": True, "revision": 2},
            {"id": "edge-2", "connected": True, "revision": 4},
        ],
    ]
    answered: list[int] = []

    def handle(req: Request) -> None:
        answered.append(1)
        req.json(200, {"items": polls[min(len(answered), len(polls)) - 1]})

    server.routes["/api/v1/dataplanes"] = handle

    def sleep(_: float) -> None:
        if len(answered) >= len(polls):
            raise KeyboardInterrupt  # Ctrl-C after the second poll

    monkeypatch.setattr("time.sleep", sleep)
    code, out, err = cli(["get", "dataplanes", "--watch"], capsys)
    rows = out.splitlines()
    assert code == 0 and err == ""
    assert rows[0].split()[0] == "NAME" and len(rows) == 4, rows
    assert [r.split()[0] for r in rows[1:]] == ["edge-1", "edge-2", "edge-1"]
    assert rows[3].split()[3] == "2"
