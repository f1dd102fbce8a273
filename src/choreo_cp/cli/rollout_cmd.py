"""``cp promote-rollout APP`` and ``cp abort-rollout APP``: manual steps of a canary rollout.

Not commands sent to the data plane: each reads the app's desired spec from the control plane,
sets ``spec.rollout.promote`` (release the manual pauses up to a step) or ``spec.rollout.abort``
and puts the spec back, a new revision that reaches the data plane like any other. Resending is
harmless (same spec: no new revision), and the operator acts on it whether or not the control
plane is reachable afterwards. A later ``cp apply`` of the app replaces its spec, clearing both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from choreo_cp.cli import views
from choreo_cp.cli.verbs import Handler
from choreo_dp.api.rollout import MAX_STEPS
from choreo_dp.cli.common import add_verb


def register(
    verbs: Any,
    handler: Handler,
    app_target: Callable[[argparse.ArgumentParser], None],
    client_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = add_verb(
        verbs,
        "promote-rollout",
        "release a canary rollout's manual pause (spec.rollout.promote, a new revision of the spec)",
        "choreo-dp cp promote-rollout orders --environment prod --dataplane edge-1          # the step it waits at",
        "choreo-dp cp promote-rollout orders --environment prod --dataplane edge-1 --step 3 # steps 1-3",
    )
    app_target(p)
    p.add_argument(
        "--step", type=_step, metavar="N",
        help="release the manual pauses of steps 1 to N (default: the step the data plane reports it waits at)",
    )  # fmt: skip
    client_args(p)
    p.set_defaults(handler=handler(promote_rollout))

    a = add_verb(
        verbs,
        "abort-rollout",
        "abort an app's canary rollout: all traffic back to the running version (spec.rollout.abort)",
        "choreo-dp cp abort-rollout orders --environment prod --dataplane edge-1",
    )
    app_target(a)
    client_args(a)
    a.set_defaults(handler=handler(abort_rollout))


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid step {text!r}: a whole number") from None
    if not 1 <= value <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"invalid step {text!r}: 1 to {MAX_STEPS}")
    return value


def _canary_spec(args: argparse.Namespace, view: dict[str, Any], verb: str) -> dict[str, Any] | None:
    spec = views.mapping(view.get("spec"))
    rollout = views.mapping(spec.get("rollout"))
    if rollout.get("strategy") != "Canary":
        sys.stderr.write(
            f"choreo-dp cp {verb}: choreoapp/{args.environment}/{args.app} has no canary rollout "
            "(spec.rollout.strategy is not Canary)\n"
        )
        return None
    return spec


def _put(args: argparse.Namespace, client: Any, spec: dict[str, Any], what: str) -> int:
    result = client.put_app(args.dataplane, args.environment, args.app, spec)
    name = f"choreoapp/{args.environment}/{args.app}"
    if not result.get("changed"):
        print(f"{name} unchanged ({what} already in the desired spec)")
    else:
        revision = result.get("objectRevision") or result.get("revision")
        print(f"{name}: {what} (revision {revision})")
    return 0


def promote_rollout(args: argparse.Namespace, client: Any, url: str) -> int:
    view = client.get_app(args.dataplane, args.environment, args.app)
    spec = _canary_spec(args, view, "promote-rollout")
    if spec is None:
        return 1
    rollout = dict(spec["rollout"])
    reported = views.mapping(views.status_of(view).get("rollout"))
    step = args.step
    if step is None:
        current = reported.get("step")
        if not isinstance(current, int) or isinstance(current, bool) or current < 1:
            sys.stderr.write(
                f"choreo-dp cp promote-rollout: the data plane has reported no rollout step for "
                f"choreoapp/{args.environment}/{args.app}: pass --step N\n"
            )
            return 1
        step = current
    step = min(step, len(rollout.get("steps") or []) or step)
    # Never take back a release already given: promote only grows within a rollout.
    released = rollout.get("promote")
    if isinstance(released, int) and released > step:
        step = released
    rollout["promote"] = step
    return _put(args, client, {**spec, "rollout": rollout}, f"spec.rollout.promote set to {step}")


def abort_rollout(args: argparse.Namespace, client: Any, url: str) -> int:
    view = client.get_app(args.dataplane, args.environment, args.app)
    spec = _canary_spec(args, view, "abort-rollout")
    if spec is None:
        return 1
    rollout = {**spec["rollout"], "abort": True}
    return _put(args, client, {**spec, "rollout": rollout}, "spec.rollout.abort set")
