"""The rebalancing rule (``choreo_cp.rebalance``): a table of cases and the properties it keeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from choreo_cp.rebalance import fair_share, to_shed


@pytest.mark.parametrize(
    ("mine", "loads", "shed"),
    [
        (0, {"a": 0, "b": 10}, 0),  # nothing to give
        (10, {"a": 10}, 0),  # alone: nowhere to go
        (10, {"a": 10, "b": 10}, 0),  # balanced
        (11, {"a": 11, "b": 10}, 0),  # one over: within the tolerance
        (15, {"a": 15, "b": 15, "c": 0}, 4),  # after a rolling restart: a quarter of 15, rounded up
        (5, {"a": 15, "b": 15, "c": 0}, 0),  # the empty replica keeps what comes
        (12, {"a": 12, "b": 10, "c": 8}, 2),  # fair 10, two over, above the tolerance of one
        (1000, {"a": 1000, "b": 1000, "c": 0}, 250),  # a quarter per round: a fleet moves in steps
        (1000, {"a": 1000, "b": 980, "c": 960}, 0),  # 20 over a share of 980: within its tenth
    ],
)
def test_to_shed(mine: int, loads: dict[str, int], shed: int) -> None:
    assert to_shed(mine, loads) == shed


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=8), st.data())
def test_shedding_never_takes_a_replica_below_its_fair_share_nor_more_than_a_quarter(
    counts: list[int], data: st.DataObject
) -> None:
    loads = {f"r{i}": n for i, n in enumerate(counts)}
    me = data.draw(st.sampled_from(sorted(loads)))
    mine = loads[me]
    shed = to_shed(mine, loads)
    assert 0 <= shed <= mine
    if shed:
        assert mine - shed >= fair_share(loads)
        assert shed <= max(1, -(-mine // 4))


@given(st.lists(st.integers(0, 500), min_size=2, max_size=6))
def test_repeated_rounds_with_least_connections_reconnects_converge(counts: list[int]) -> None:
    """Rounds of: every replica sheds what the rule says, the shed agents reconnect one by one to the
    least loaded replica. Within 20 rounds no replica is more than the tolerance above its share."""
    loads = {f"r{i}": n for i, n in enumerate(counts)}
    for _ in range(20):
        moving = 0
        for name in sorted(loads):
            k = to_shed(loads[name], loads)
            loads[name] -= k
            moving += k
        for _ in range(moving):
            least = min(sorted(loads), key=lambda n: loads[n])
            loads[least] += 1
        if all(to_shed(n, loads) == 0 for n in loads.values()):
            break
    assert all(to_shed(n, loads) == 0 for n in loads.values()), loads
