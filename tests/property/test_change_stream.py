"""The agent's change stream under any interleaving of deliveries, completions and reconnects.

A model of what the control plane sent (a chain of revisions, each naming the one before it) runs
beside :class:`ChangeStream`; the machine delivers changes in any order and any number of times,
finishes released ones in any order, reconnects (a new stream resuming from the acknowledged
revision, as a new session does) and resets after snapshots. The guarantees checked after every
step: the acknowledged revision only moves forward, never passes a released change that is not
finished, and is the highest it may be; changes are released once each, in chain order, and
nothing delivered is lost.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from choreo_dp.agent.stream import ChainBroken, Change, ChangeStream
from choreo_wire import protocol as P

LIMIT = 4  # small, so the machine reaches a full reorder buffer


def change(revision: int, prev: int | None, delete: bool = False) -> Change:
    if delete:
        return P.DesiredDelete(key="ChoreoApp/dev/web", revision=revision, prev=prev)
    spec = {"displayName": str(revision)}
    return P.DesiredPut(
        key="ChoreoApp/dev/web",
        kind="ChoreoApp",
        revision=revision,
        prev=prev,
        spec_hash=P.spec_hash(spec),
        spec=spec,
    )


class ChangeStreamMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.chain = [3]  # chain[0] is the base; chain[i] names chain[i - 1] as its prev
        self.stream = ChangeStream(base=3, limit=LIMIT)
        self.received = 0  # index into chain
        self.early: set[int] = set()  # indices waiting for their predecessor
        self.released: list[int] = []  # revisions, in release order, since the last (re)start
        self.finished: set[int] = set()
        self.last_acked = 3

    # --- what the control plane does ------------------------------------------------------------

    @rule(gap=st.integers(1, 3))
    def control_plane_writes(self, gap: int) -> None:
        self.chain.append(self.chain[-1] + gap)  # revisions need not be contiguous

    @precondition(lambda self: len(self.chain) > 1)
    @rule(data=st.data(), delete=st.booleans())
    def deliver(self, data: st.DataObject, delete: bool) -> None:
        i = data.draw(st.integers(1, len(self.chain) - 1), label="chain index")
        c = change(self.chain[i], self.chain[i - 1], delete)
        if self.chain[i] <= self.chain[self.received] or i in self.early:
            assert self.stream.offer(c) == ("duplicate", [])
        elif i - 1 == self.received:
            verdict, out = self.stream.offer(c)
            expect = [i]
            while expect[-1] + 1 in self.early:
                self.early.discard(expect[-1] + 1)
                expect.append(expect[-1] + 1)
            assert verdict == "released"
            assert [x.revision for x in out] == [self.chain[j] for j in expect]
            self.released += [self.chain[j] for j in expect]
            self.received = expect[-1]
        elif len(self.early) >= LIMIT:
            with pytest.raises(ChainBroken):
                self.stream.offer(c)
            self.reconnect()
        else:
            assert self.stream.offer(c) == ("buffered", [])
            self.early.add(i)

    @rule(data=st.data())
    def deliver_forged(self, data: st.DataObject) -> None:
        """A change that claims a predecessor below what was received, or none at all."""
        top = self.chain[self.received]
        revision = data.draw(st.integers(top + 1, top + 5), label="revision")
        below = st.integers(0, top - 1) if top > 0 else st.nothing()
        prev = data.draw(st.one_of(st.none(), below), label="prev")
        with pytest.raises(ChainBroken):
            self.stream.offer(change(revision, prev))
        self.reconnect()

    # --- what the agent does ----------------------------------------------------------------------

    @precondition(lambda self: set(self.released) - self.finished)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        revision = data.draw(st.sampled_from(sorted(set(self.released) - self.finished)), label="finish")
        self.finished.add(revision)
        assert self.stream.finish(revision) == self.expected_ack()

    @rule()
    def reconnect(self) -> None:
        """The session ended: a new one resumes from the acknowledged revision; work in flight is lost."""
        acked = self.stream.acked
        self.stream = ChangeStream(base=acked, limit=LIMIT)
        self.received = self.chain.index(acked)
        self.early.clear()
        self.released = []
        self.finished = set()

    @rule(ahead=st.integers(-3, 5))
    def snapshot_reset(self, ahead: int) -> None:
        revision = max(0, self.chain[-1] + ahead)  # a restored control plane may be behind
        if set(self.released) - self.finished:
            with pytest.raises(ChainBroken):
                self.stream.reset(revision)
            return
        self.stream.reset(revision)
        self.chain = [revision]
        self.received = 0
        self.early.clear()
        self.released = []
        self.finished = set()
        self.last_acked = revision  # a new chain: monotonic from here

    # --- the guarantees -------------------------------------------------------------------------

    def expected_ack(self) -> int:
        acked = self.stream.base
        for revision in self.released:
            if revision not in self.finished:
                break
            acked = revision
        return acked

    @invariant()
    def acknowledged_only_moves_forward(self) -> None:
        assert self.stream.acked >= self.last_acked
        self.last_acked = self.stream.acked

    @invariant()
    def acknowledged_never_passes_an_unfinished_change(self) -> None:
        for revision in set(self.released) - self.finished:
            assert self.stream.acked < revision

    @invariant()
    def acknowledged_is_as_high_as_it_may_be(self) -> None:
        assert self.stream.acked == self.expected_ack()

    @invariant()
    def received_in_chain_order_and_bounded(self) -> None:
        assert self.stream.received == self.chain[self.received]
        assert self.released == sorted(set(self.released))  # each once, in order
        assert self.stream.buffered == len(self.early) <= LIMIT
        assert self.stream.in_flight == sum(1 for r in self.released if r > self.stream.acked)

    def teardown(self) -> None:
        """Nothing is lost: delivering the rest of the chain in order and finishing it acks the top."""
        if set(self.released) - self.finished or len(self.early) >= LIMIT:
            return
        for i in range(self.received + 1, len(self.chain)):
            if i not in self.early:
                self.stream.offer(change(self.chain[i], self.chain[i - 1]))
        for revision in self.chain[1:]:
            if revision > self.stream.acked and revision not in self.finished:
                self.stream.finish(revision)
        assert self.stream.received == self.chain[-1]
        assert self.stream.acked == self.chain[-1]
        assert self.stream.in_flight == 0 and self.stream.buffered == 0


ChangeStreamMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_change_stream = ChangeStreamMachine.TestCase
