"""The agent's stream channel and log line cutter, without a cluster: credit, chunks, limits, cuts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from choreo_dp.agent.streams.channel import CUT_MARK, Channel, StreamStop, bound_line, object_cost
from choreo_dp.kube.lines import LineCutter
from choreo_wire import protocol as P
from tests.tunnel.conftest import eventually

pytestmark = pytest.mark.timeout(10)


def opened(credit: int, limit_bytes: int | None = None) -> P.StreamOpen:
    return P.StreamOpen(
        id="s1",
        kind="logs",
        key="ChoreoApp/dev/a",
        params=P.StreamParams(limit_bytes=limit_bytes),
        credit=credit,
    )


class Sink:
    def __init__(self) -> None:
        self.frames: list[P.StreamData] = []

    async def __call__(self, body: P.Body) -> None:
        assert isinstance(body, P.StreamData)
        self.frames.append(body)

    def cost(self) -> int:
        return sum(len(line.encode()) + 1 for f in self.frames for line in f.lines) + sum(
            object_cost(o) for f in self.frames for o in f.objects
        )


async def test_frames_never_exceed_the_chunk_or_the_credit_and_wait_for_more() -> None:
    sink = Sink()
    ch = Channel(opened(credit=250), sink, chunk_bytes=120)
    lines = [f"p/c: line {i:03d} " + "x" * 41 for i in range(10)]  # 56 bytes each with newline
    task = asyncio.create_task(ch.lines(lines))
    # two frames of two lines (a third would pass the chunk); the fifth line waits for credit
    await eventually(lambda: sink.cost() == 224, what="four lines sent")
    assert not task.done(), "the fifth line is beyond the credit: the writer waits"
    assert all(sum(len(x) + 1 for x in f.lines) <= 120 for f in sink.frames)
    ch.grant(1000)
    await asyncio.wait_for(task, 2)
    assert [line for f in sink.frames for line in f.lines] == lines
    assert [f.seq for f in sink.frames] == list(range(len(sink.frames)))
    assert ch.sent_bytes == sink.cost() == 560 and ch.credit == 250 + 1000 - 560


async def test_no_credit_for_too_long_is_a_limit() -> None:
    ch = Channel(opened(credit=10), Sink(), credit_wait=0.2)
    with pytest.raises(StreamStop) as stop:
        await asyncio.wait_for(ch.lines(["a line longer than ten bytes"]), 2)
    assert stop.value.code == "limit" and "no credit" in stop.value.message


async def test_limit_bytes_sends_what_fits_then_stops() -> None:
    sink = Sink()
    ch = Channel(opened(credit=10_000, limit_bytes=25), sink)
    with pytest.raises(StreamStop) as stop:
        await ch.lines(["0123456789", "0123456789", "0123456789"])  # 11 bytes each
    assert stop.value.code == "limit"
    assert [line for f in sink.frames for line in f.lines] == ["0123456789", "0123456789"]
    assert ch.sent_bytes == 22


def test_long_lines_are_cut_and_marked_within_the_bound() -> None:
    long = "é" * P.STREAM_MAX_LINE_BYTES  # 2 bytes each: the cut falls inside characters
    out = bound_line(long)
    assert out.endswith(CUT_MARK) and len(out.encode()) <= P.STREAM_MAX_LINE_BYTES
    assert bound_line("short") == "short"


def test_line_cutter_bounds_memory_and_marks_cut_lines() -> None:
    cutter = LineCutter(8)
    assert cutter.feed(b"abc\n0123456789") == [(b"abc", False)]
    assert cutter.feed(b"more and more") == []
    assert cutter.feed(b"!\nx\ny") == [(b"01234567", True), (b"x", False)]
    assert cutter.finish() == [(b"y", False)]
    assert cutter.finish() == []


@pytest.mark.parametrize(
    ("argv", "env", "want"),
    [
        ([], None, True),
        (["--no-observability"], None, False),
        ([], "false", False),
        ([], "off", False),
        (["--observability"], "false", True),  # the flag wins over the environment
    ],
)
def test_agent_observability_switch(
    argv: list[str], env: str | None, want: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from choreo_dp.cli.agent_cmd import agent_config
    from choreo_dp.cli.main import build_parser

    if env is None:
        monkeypatch.delenv("CHOREO_DP_OBSERVABILITY", raising=False)
    else:
        monkeypatch.setenv("CHOREO_DP_OBSERVABILITY", env)
    token = tmp_path / "t"
    token.write_text("x")
    base = ["agent", "--control-plane", "wss://127.0.0.1:1", "--dataplane", "dp", "--token-file", str(token)]
    cfg = agent_config(build_parser().parse_args([*base, *argv]))
    assert cfg.observability_enabled is want


def test_agent_observability_env_must_be_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    from choreo_dp.cli.common import UsageError
    from choreo_dp.cli.main import build_parser

    monkeypatch.setenv("CHOREO_DP_OBSERVABILITY", "maybe")
    with pytest.raises(UsageError, match="CHOREO_DP_OBSERVABILITY"):
        build_parser()
