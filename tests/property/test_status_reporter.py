"""The agent's status reporter under any interleaving of status changes, batches, sends and losses.

Status reports are not acknowledged: the reporter must get the control plane to the cluster's
newest status of every object by itself. The machine changes statuses in the cluster (including
back to a value sent before, the case a last-*sent* dedup got wrong: a revert that arrived while
another status waited to be sent was skipped and the older one sent), repeats watch events, takes
batches, delivers them in order, ends sessions (batches still queued are given back, batches in the
socket are lost, the control plane forgets what it had not written yet) and re-creates objects at
the control plane (which drops their status; the agent sees the put again). After draining, the
control plane holds exactly the cluster's newest status of every object; and nothing is queued
twice.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from choreo_dp.agent.cluster import LABEL_DATAPLANE, ClusterStore
from choreo_dp.agent.statusreport import StatusReporter
from choreo_wire import protocol as P

DP = "dp-1"
NAMES = ("web", "api")
VALUES = ("Progressing 1/3", "Ready 3/3")  # two: a change is often a return


def key(name: str) -> str:
    return P.app_key("dev", name)


def obj(name: str, value: str) -> dict[str, Any]:
    phase, ready = value.split()
    return {
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": "choreo-dev", "labels": {LABEL_DATAPLANE: DP}},
        "spec": {"environment": "dev", "image": "r.example.com/app:1"},
        "status": {"phase": phase, "ready": ready},
    }


class StatusReporterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reporter = StatusReporter(None, ClusterStore(None, DP))  # type: ignore[arg-type]
        self.cluster: dict[str, str] = {}  # key -> the newest status value in the cluster
        self.outq: list[list[P.StatusItem]] = []  # batches taken, not yet on the wire
        self.cp: dict[str, dict[str, Any]] = {}  # what the control plane holds

    @rule(name=st.sampled_from(NAMES), value=st.sampled_from(VALUES))
    def cluster_changes(self, name: str, value: str) -> None:
        self.cluster[key(name)] = value
        self.reporter.on_event("MODIFIED", obj(name, value))

    @rule(name=st.sampled_from(NAMES))
    def watch_repeats_an_event(self, name: str) -> None:
        # a relist or a metadata-only change: the same status again
        if key(name) in self.cluster:
            self.reporter.on_event("MODIFIED", obj(name, self.cluster[key(name)]))

    @rule(limit=st.integers(1, 3))
    def flusher_takes(self, limit: int) -> None:
        items = self.reporter.take(limit)
        if items:
            self.outq.append(items)

    @rule()
    def sender_delivers(self) -> None:
        if self.outq:
            for item in self.outq.pop(0):
                self.cp[item.key] = item.status

    @rule(in_socket=st.integers(0, 2), forgotten=st.sets(st.sampled_from(NAMES)))
    def session_ends(self, in_socket: int, forgotten: set[str]) -> None:
        """The first ``in_socket`` batches were written to the socket and die with it; the rest are
        given back. The control plane, killed, forgets what it had not written yet."""
        for batch in self.outq[in_socket:]:
            self.reporter.requeue(batch)
        self.outq.clear()
        for name in forgotten:
            self.cp.pop(key(name), None)
        self.reporter.resend_all()

    @rule(name=st.sampled_from(NAMES))
    def control_plane_recreates(self, name: str) -> None:
        """Deleted and put again at the control plane (its status row goes), the cluster's object
        unchanged: the agent applies the put and has nothing to write."""
        self.cp.pop(key(name), None)
        self.reporter.resend(key(name))

    @invariant()
    def one_entry_per_key(self) -> None:
        assert all(k == item.key for k, item in self.reporter.pending.items())
        assert self.reporter.changed.is_set() or not self.reporter.pending

    @rule()
    def drained_the_control_plane_tells_the_truth(self) -> None:
        for _ in range(len(NAMES) + len(self.outq) + 2):
            self.sender_delivers()
            self.flusher_takes(len(NAMES))
        assert not self.outq and not self.reporter.pending
        want = {k: obj(k.rsplit("/", 1)[1], v)["status"] for k, v in self.cluster.items()}
        assert self.cp == want


TestStatusReporter = StatusReporterMachine.TestCase
TestStatusReporter.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
