"""The shared protocol module: envelopes, error frames, keys, hashes, digests, mode and planner."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_dp.agent import resync as R
from choreo_wire import protocol as P

SPEC = {"environment": "dev", "project": "p", "type": "service", "image": "r.io/a:1"}


def test_roundtrip_every_body_type() -> None:
    put = P.DesiredPut(
        key="ChoreoApp/dev/a", kind="ChoreoApp", revision=3, prev=2, spec_hash=P.spec_hash(SPEC), spec=SPEC
    )
    text = P.encode(put, seq=1, corr="c1")
    raw = json.loads(text)
    assert raw["type"] == "desired.put" and raw["v"] == 1 and raw["corr"] == "c1"
    assert raw["body"]["specHash"] == P.spec_hash(SPEC)  # camelCase on the wire
    frame = P.decode(text)
    assert frame.body == put
    for cls in P.BODY_TYPES.values():
        assert cls.TYPE in P.BODY_TYPES


def test_unknown_fields_are_ignored() -> None:
    text = json.dumps(
        {"v": 1, "type": "applied", "id": "x", "seq": 1, "future": 1, "body": {"revision": 4, "new": [1]}}
    )
    frame = P.decode(text)
    assert isinstance(frame.body, P.Applied) and frame.body.revision == 4


@pytest.mark.parametrize(
    ("data", "code", "ref"),
    [
        ("{not json", "bad_json", None),
        ("[1,2]", "bad_envelope", None),
        ('{"v":1,"type":"nope","id":"i1","seq":1,"body":{}}', "unknown_type", "i1"),
        ('{"v":1,"type":"applied","id":"i2","seq":1,"body":{"revision":-1}}', "bad_body", "i2"),
        ('{"v":9,"type":"applied","id":"i3","seq":1,"body":{"revision":1}}', "unsupported_version", "i3"),
        ('{"v":1,"type":"applied","seq":1,"body":{"revision":1}}', "bad_envelope", None),
    ],
)
def test_bad_frames_raise_protocol_error_with_ref(data: str, code: str, ref: str | None) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(data)
    assert info.value.code == code
    assert info.value.ref == ref
    err = info.value.to_error()
    assert P.decode(P.encode(err, seq=1)).body == err


def test_hello_accepted_in_any_version() -> None:
    text = json.dumps(
        {"v": 7, "type": "hello", "id": "h", "seq": 1, "body": {"dataplaneId": "dp1", "versions": [1, 7]}}
    )
    assert isinstance(P.decode(text).body, P.Hello)
    assert P.negotiate(P.SUPPORTED_VERSIONS, [1, 7]) == 1
    assert P.negotiate([1], [2]) is None


def test_oversized_frames() -> None:
    big = "x" * (P.MAX_FRAME_BYTES + 10)
    with pytest.raises(P.ProtocolError) as info:
        P.decode(json.dumps({"v": 1, "type": "heartbeat", "id": "b", "seq": 1, "body": {"time": big}}))
    assert info.value.code == "too_large"
    spec = {"environment": "dev", "blob": big}
    with pytest.raises(P.FrameTooLarge):
        P.encode(
            P.DesiredPut(
                key="ChoreoApp/dev/a", kind="ChoreoApp", revision=1, spec_hash=P.spec_hash(spec), spec=spec
            ),
            seq=1,
        )


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(P.ProtocolError):
        P.decode('{"v":1,"type":"heartbeat","id":"d","seq":1,"body":{"time":' + deep + "}}")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_garbage_never_raises_anything_but_protocol_error(data: bytes | str) -> None:
    try:
        P.decode(data)
    except P.ProtocolError as exc:
        assert exc.code in P.ErrorCode.__args__  # type: ignore[attr-defined]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(P.BODY_TYPES)),
    st.dictionaries(
        st.sampled_from(["key", "revision", "prev", "spec", "specHash", "items", "epoch", "keys", "mode"]),
        json_values,
    ),
)
def test_typed_garbage_bodies(msg_type: str, body: dict[str, object]) -> None:
    data = json.dumps({"v": 1, "type": msg_type, "id": "g", "seq": 1, "body": body})
    try:
        frame = P.decode(data)
    except P.ProtocolError as exc:
        assert exc.ref == "g"
    else:
        assert frame.type == msg_type


def test_keys() -> None:
    assert P.parse_key("Environment/dev") == P.Key("Environment", "dev", "dev")
    assert P.parse_key("ChoreoApp/dev/web-1") == P.Key("ChoreoApp", "dev", "web-1")
    assert str(P.parse_key(P.app_key("dev", "a"))) == "ChoreoApp/dev/a"
    for bad in [
        "",
        "Environment/",
        "Environment/Dev",
        "ChoreoApp/dev",
        "ChoreoApp/dev/a/b",
        "Secret/x",
        "x" * 300,
    ]:
        with pytest.raises(ValueError):
            P.parse_key(bad)


def test_spec_hash_is_canonical() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    b = {"a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert P.spec_hash(a) == P.spec_hash(b)
    assert P.spec_hash(a) != P.spec_hash({**a, "b": 2})
    assert len(P.spec_hash(a)) == 64


def _inventory(n: int) -> dict[str, str]:
    return {P.app_key("dev", f"app-{i}"): P.spec_hash({"i": i}) for i in range(n)}


def test_bucket_digests_find_exactly_the_changed_buckets() -> None:
    agent = _inventory(1000)
    cp = dict(agent)
    changed = random.Random(1).sample(sorted(cp), 10)
    for k in changed[:5]:
        cp[k] = P.spec_hash({"changed": k})
    for k in changed[5:]:
        del cp[k]
    cp[P.app_key("dev", "new")] = P.spec_hash({"new": 1})
    n = P.bucket_count(len(cp), len(agent))
    assert n == 256
    ours, theirs = P.bucket_digests(agent, n), P.bucket_digests(cp, n)
    theirs = P.decode_digests(P.encode_digests(theirs), n)
    diff = P.differing_buckets(ours, theirs)
    touched = {P.bucket_of(k, n) for k in [*changed, P.app_key("dev", "new")]}
    assert set(diff) == touched
    inv = P.in_buckets(agent, diff, n)
    puts, same = P.snapshot_diff(cp, inv, diff, n)
    assert set(puts) == {*changed[:5], P.app_key("dev", "new")}
    assert all(cp[k] == agent[k] for k in same)
    with pytest.raises(ValueError):
        P.decode_digests(P.encode_digests(ours), n * 2)


def test_inventory_frames_are_chunked_below_the_limit() -> None:
    inv = _inventory(9000)
    frames = P.inventory_frames([1, 2], inv)
    assert len(frames) == 3 and frames[-1].last and not frames[0].last
    assert frames[0].buckets == [1, 2] and frames[1].buckets is None
    merged: dict[str, str] = {}
    for f in frames:
        assert len(P.encode(f, seq=1).encode()) < P.MAX_FRAME_BYTES
        merged.update(f.items)
    assert merged == inv
    assert len(P.inventory_frames([], {})) == 1


def test_choose_mode() -> None:
    kw = {"cp_epoch": "e1", "cp_revision": 10, "log_floor": 0}
    assert P.choose_mode(**kw, agent_epoch="e1", agent_revision=4) == "incremental"
    assert P.choose_mode(**kw, agent_epoch="e1", agent_revision=10) == "incremental"
    assert P.choose_mode(**kw, agent_epoch="e0", agent_revision=4) == "resync"
    assert P.choose_mode(**kw, agent_epoch=None, agent_revision=0) == "resync"
    assert P.choose_mode(**kw, agent_epoch="e1", agent_revision=11) == "resync"  # agent ahead: older backup
    assert (
        P.choose_mode(cp_epoch="e1", cp_revision=10, log_floor=5, agent_epoch="e1", agent_revision=4)
        == "resync"
    )


def _local(apps: int, envs: int = 1) -> dict[str, R.LocalItem]:
    out = {P.app_key("dev", f"a{i}"): R.LocalItem("ChoreoApp", "h") for i in range(apps)}
    out.update({P.environment_key(f"e{i}"): R.LocalItem("Environment", "h") for i in range(envs)})
    return out


def _plan(local: dict[str, R.LocalItem], remote: set[str], **kw: object) -> R.ResyncPlan:
    args: dict[str, object] = {
        "compared_buckets": None,
        "buckets": 16,
        "agent_epoch": "e1",
        "agent_revision": 10,
        "cp_epoch": "e1",
        "cp_revision": 12,
        "cp_total": max(len(remote), 1),
    }
    args.update(kw)
    return R.plan_resync(local, remote, **args)  # type: ignore[arg-type]


def test_planner_deletes_small_consistent_differences() -> None:
    local = _local(10)
    remote = set(local) - {P.app_key("dev", "a0"), P.app_key("dev", "a1")}
    plan = _plan(local, remote)
    assert plan.deletes == [P.app_key("dev", "a0"), P.app_key("dev", "a1")] and not plan.orphans


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"cp_epoch": "e2"}, "epoch_changed"),
        ({"agent_epoch": None}, "epoch_changed"),
        ({"cp_revision": 9}, "revision_regressed"),
        ({"cp_total": 0}, "control_plane_empty"),
    ],
)
def test_planner_holds_on_unsafe_control_plane(kw: dict[str, object], reason: str) -> None:
    local = _local(10)
    remote = set(local) - {P.app_key("dev", "a0")}
    plan = _plan(local, remote, **kw)
    assert plan.deletes == [] and plan.orphans == [P.app_key("dev", "a0")] and plan.hold_reason == reason


def test_planner_mass_deletion_threshold() -> None:
    local = _local(10)
    two = set(local) - {P.app_key("dev", "a0"), P.app_key("dev", "a1")}
    three = two - {P.app_key("dev", "a2")}
    assert _plan(local, two).deletes  # 20 % exactly: allowed
    plan = _plan(local, three)  # 30 %: held
    assert not plan.deletes and len(plan.orphans) == 3 and plan.hold_reason == "mass_deletion"


def test_planner_keeps_orphans_held_and_respects_buckets() -> None:
    local = _local(10)
    local[P.app_key("dev", "a0")] = R.LocalItem("ChoreoApp", "h", orphaned=True)
    remote = set(local) - {P.app_key("dev", "a0"), P.app_key("dev", "a1")}
    plan = _plan(local, remote)
    assert plan.deletes == [P.app_key("dev", "a1")]  # a0 stays an orphan, not deleted
    other = [b for b in range(16) if b != P.bucket_of(P.app_key("dev", "a1"), 16)]
    assert _plan(local, remote, compared_buckets=other).deletes == []
