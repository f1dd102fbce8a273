"""Ordering of the change stream and the cumulative ack (pure)."""

from __future__ import annotations

import pytest

from choreo_dp.agent.stream import ChainBroken, ChangeStream
from choreo_wire import protocol as P


def put(rev: int, prev: int | None, key: str = "Environment/dev") -> P.DesiredPut:
    spec = {"displayName": str(rev)}
    return P.DesiredPut(
        key=key, kind="Environment", revision=rev, prev=prev, spec_hash=P.spec_hash(spec), spec=spec
    )


def test_in_order_release_and_cumulative_ack() -> None:
    s = ChangeStream(base=5)
    assert s.offer(put(6, 5)) == ("released", [put(6, 5)])
    assert s.offer(put(8, 6))[0] == "released"  # revisions need not be contiguous
    assert s.finish(8) == 5  # 6 still open: cannot ack 8
    assert s.finish(6) == 8
    assert s.in_flight == 0


def test_reordered_frames_wait_for_their_predecessor() -> None:
    s = ChangeStream(base=0)
    assert s.offer(put(3, 2)) == ("buffered", [])
    assert s.offer(put(2, 1)) == ("buffered", [])
    verdict, released = s.offer(put(1, 0))
    assert verdict == "released" and [c.revision for c in released] == [1, 2, 3]
    assert s.buffered == 0 and s.received == 3


def test_duplicates_are_recognised() -> None:
    s = ChangeStream(base=0)
    s.offer(put(1, 0))
    assert s.offer(put(1, 0)) == ("duplicate", [])
    s.offer(put(3, 2))
    assert s.offer(put(3, 2)) == ("duplicate", [])  # duplicate of a buffered one


def test_broken_chains_raise() -> None:
    s = ChangeStream(base=4)
    with pytest.raises(ChainBroken):
        s.offer(put(7, 2))  # prev below what we have, revision above
    with pytest.raises(ChainBroken):
        s.offer(put(7, None))
    small = ChangeStream(base=0, limit=2)
    small.offer(put(5, 4))
    small.offer(put(6, 5))
    with pytest.raises(ChainBroken):
        small.offer(put(8, 7))


def test_reset_after_snapshot() -> None:
    s = ChangeStream(base=3)
    s.offer(put(4, 3))
    with pytest.raises(ChainBroken):
        s.reset(10)
    s.finish(4)
    s.reset(10)
    assert s.received == 10 and s.acked == 10
    assert s.offer(put(11, 10))[0] == "released"
