"""Digests + the resync planner: both ends converge, and nothing is deleted when the control plane
looks unsafe.

The machine keeps a control plane (desired key -> spec hash, epoch, revision, its history) and an
agent (its managed objects, the epoch and revision it persisted). Between resyncs either side
changes: the control plane writes and deletes, loses its store (new epoch, empty), is restored from
an older backup (same epoch, lower revision); objects carrying the agent's labels appear that the
control plane never sent. A resync then runs the pure steps of both ends exactly as the session and
the control plane chain them (digests, differing buckets, inventory, snapshot diff, puts, plan) with
any bucket count. Checked: afterwards the agent's inventory equals the control plane's desired state
(and a second resync compares no bucket); the consistency count an honest control plane sends always
adds up; deletions happen only when the control plane looks safe (same epoch, not behind, not
empty, under the mass-deletion threshold), and then exactly the objects it no longer has are
deleted; otherwise every candidate is held as an orphan and held objects are never deleted by a
resync.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from choreo_dp.agent.resync import MASS_DELETION_FRACTION, LocalItem, plan_resync
from choreo_wire import protocol as P

ENVS = ("dev", "qa")
KEYS = tuple(
    [P.environment_key(e) for e in ENVS] + [P.app_key(e, a) for e in ENVS for a in ("api", "web", "db", "mq")]
)


def kind_of(key: str) -> P.Kind:
    return P.parse_key(key).kind


def spec_hash(version: int) -> str:
    return P.spec_hash({"version": version})


class ResyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.epochs = 1
        self.cp_epoch = "e1"
        self.cp_revision = 0
        self.desired: dict[str, str] = {}
        self.history: list[tuple[int, dict[str, str]]] = [(0, {})]
        self.local: dict[str, LocalItem] = {}
        self.agent_epoch: str | None = None  # a fresh data plane
        self.agent_revision = 0

    # --- the control plane ------------------------------------------------------------------------

    def committed(self) -> None:
        self.cp_revision += 1
        self.history.append((self.cp_revision, dict(self.desired)))

    @rule(key=st.sampled_from(KEYS), version=st.integers(0, 3))
    def cp_put(self, key: str, version: int) -> None:
        self.desired[key] = spec_hash(version)
        self.committed()

    @precondition(lambda self: self.desired)
    @rule(data=st.data())
    def cp_delete(self, data: st.DataObject) -> None:
        del self.desired[data.draw(st.sampled_from(sorted(self.desired)))]
        self.committed()

    @rule()
    def cp_loses_its_store(self) -> None:
        self.epochs += 1
        self.cp_epoch = f"e{self.epochs}"
        self.cp_revision = 0
        self.desired = {}
        self.history = [(0, {})]

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data())
    def cp_restored_from_an_older_backup(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.history) - 2), label="backup")
        self.cp_revision, desired = self.history[i]
        self.desired = dict(desired)
        del self.history[i + 1 :]

    # --- the agent's cluster ----------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), version=st.integers(0, 3))
    def labelled_object_appears(self, key: str, version: int) -> None:
        """An object with the agent's labels that no control plane of this epoch sent."""
        if key not in self.local:
            self.local[key] = LocalItem(kind_of(key), spec_hash(version))

    # --- resync -------------------------------------------------------------------------------------

    def inventory(self) -> dict[str, str]:
        return {k: item.spec_hash for k, item in self.local.items() if not item.orphaned}

    def compare(self, buckets: int) -> list[int]:
        theirs = P.decode_digests(P.encode_digests(P.bucket_digests(self.desired, buckets)), buckets)
        return P.differing_buckets(P.bucket_digests(self.inventory(), buckets), theirs)

    @rule(buckets=st.sampled_from([None, 1, 2, 16]))
    def resync(self, buckets: int | None) -> None:
        before = dict(self.local)
        b = P.bucket_count(len(self.desired), len(self.local)) if buckets is None else buckets
        # agent: digests of what it claims to have; the inventory of the buckets that differ
        inventory = self.inventory()
        compared = self.compare(b)
        inside = P.in_buckets(inventory, compared, b)
        identical = len(inventory) - len(inside)
        # control plane: what travels as puts and what as snapshot.keys
        puts, same = P.snapshot_diff(self.desired, inside, compared, b)
        kinds = [kind_of(k) for k in puts]
        assert kinds == sorted(kinds, key=lambda kind: kind != "Environment"), "apps before their env"
        assert len(puts) + len(same) + identical == len(self.desired), "an honest count must add up"
        # agent: apply the puts (a put adopts a held object again), plan the rest
        for key in puts:
            self.local[key] = LocalItem(kind_of(key), self.desired[key])
        remote = {k for k in [*puts, *same] if k in self.local}
        plan = plan_resync(
            self.local,
            remote,
            compared_buckets=compared,
            buckets=b,
            agent_epoch=self.agent_epoch,
            agent_revision=self.agent_revision,
            cp_epoch=self.cp_epoch,
            cp_revision=self.cp_revision,
            cp_total=len(self.desired),
        )
        candidates = {k for k, item in self.local.items() if not item.orphaned and k not in self.desired}
        reasons = []  # in the order the planner names them
        if self.agent_epoch != self.cp_epoch:
            reasons.append("epoch_changed")
        if self.cp_revision < self.agent_revision:
            reasons.append("revision_regressed")
        if not self.desired:
            reasons.append("control_plane_empty")
        for kind in ("ChoreoApp", "Environment"):
            managed = sum(1 for item in self.local.values() if item.kind == kind and not item.orphaned)
            deleting = sum(1 for k in candidates if kind_of(k) == kind)
            if managed and deleting > MASS_DELETION_FRACTION * managed:
                reasons.append("mass_deletion")
        if candidates and reasons:
            assert plan.deletes == [], f"deleted {plan.deletes} though the control plane looks unsafe"
            assert set(plan.orphans) == candidates
            assert plan.hold_reason == reasons[0]
        else:
            assert set(plan.deletes) == candidates, "a safe resync deletes what the cp no longer has"
            assert plan.orphans == [] and plan.hold_reason is None
        for key in plan.deletes:
            del self.local[key]
        for key in plan.orphans:
            self.local[key] = LocalItem(self.local[key].kind, self.local[key].spec_hash, orphaned=True)
        self.agent_epoch, self.agent_revision = self.cp_epoch, self.cp_revision
        # both ends converge: the agent claims exactly what the control plane wants
        assert self.inventory() == self.desired
        assert self.compare(b) == [] and self.compare(P.MIN_BUCKETS) == []
        if reasons:
            assert set(before) <= set(self.local), "nothing deleted when the control plane looks unsafe"
        for key, item in before.items():
            if item.orphaned and key not in self.desired:
                assert self.local[key].orphaned, "a held object stays held until a desired.delete"

    @invariant()
    def digests_are_a_function_of_content(self) -> None:
        inventory = self.inventory()
        assert P.bucket_digests(dict(reversed(list(inventory.items()))), 16) == P.bucket_digests(
            inventory, 16
        )


ResyncMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_resync = ResyncMachine.TestCase
