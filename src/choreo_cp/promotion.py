"""Promotion: the exact image (by digest) running in one place, deployed to another.

The digest comes from the *reported* status of the source app, never from its desired spec: a tag
in the spec may have moved since, the digest the data plane reports is what actually runs. The
digest is the only thing the data plane is trusted for. The repository is the control plane's own:
the reported image must name the same repository as the source app's desired image (normalised as
the container runtime would), and the promoted reference is built from the desired repository and
the reported digest. A data plane reporting another repository's image (``ghcr.io/acme/backdoor``
for an app that runs ``ghcr.io/acme/shop``) cannot get that image deployed anywhere.
"""

from __future__ import annotations

import copy
import enum
from typing import Any

from choreo_dp.api.images import InvalidImage, parse_image, same_repository


class Unset(enum.Enum):
    """A field the request left out (distinct from an explicit null)."""

    UNSET = "unset"


UNSET = Unset.UNSET


class PromotionRefused(Exception):
    """The promotion cannot be carried out as asked (maps to 409)."""


def promoted_image(status: dict[str, Any] | None, desired_image: str, app: str, where: str) -> str:
    """``<desired repository>@<reported digest>``; raises :class:`PromotionRefused`."""
    if not status:
        raise PromotionRefused(
            f"app {app!r} in {where} has no status reported by its data plane yet, so the running image "
            "digest is unknown; wait until it runs (GET the app to see its status) and retry"
        )
    reported = status.get("image")
    if not isinstance(reported, str):
        raise PromotionRefused(
            f"app {app!r} in {where} reports no running image; promotion moves images by digest"
        )
    try:
        running = parse_image(reported)
    except InvalidImage as exc:
        raise PromotionRefused(f"app {app!r} in {where} reports an invalid image: {exc}") from None
    if running.digest is None:
        raise PromotionRefused(
            f"app {app!r} in {where} reports image {reported!r}, which carries no digest (@sha256:...); "
            "promotion only moves images by digest"
        )
    try:
        desired = parse_image(desired_image)
    except InvalidImage as exc:
        raise PromotionRefused(f"app {app!r} in {where} has an invalid desired image: {exc}") from None
    if not same_repository(reported, desired_image):
        raise PromotionRefused(
            f"app {app!r} in {where} reports running {running.name}, but its desired image is from "
            f"{desired.name}; only a digest of the app's own repository is promoted (the data plane is "
            "trusted for the digest, not for the repository)"
        )
    return f"{desired.name}@{running.digest}"


def pinned_image(ran_image: str | None, spec_image: str) -> str | None:
    """``<spec repository>@<digest that ran>``, or None when nothing trustworthy ran.

    What a rollback deploys when the data plane reported the digest that ran the revision: the same
    rule as a promotion (the digest is trusted, the repository is the spec's own), but not an error
    when it does not hold, since the spec's own reference is still a valid thing to push again.
    """
    if ran_image is None:
        return None
    try:
        ran = parse_image(ran_image)
        desired = parse_image(spec_image)
    except InvalidImage:
        return None
    if ran.digest is None or not same_repository(ran_image, spec_image):
        return None
    return f"{desired.name}@{ran.digest}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def promoted_spec(
    *,
    source_spec: dict[str, Any],
    target_spec: dict[str, Any] | None,
    image: str,
    environment: str,
    overrides: dict[str, Any] | None,
    rollout: dict[str, Any] | Unset | None = UNSET,
) -> dict[str, Any]:
    """The spec to PUT at the target.

    An app that already exists at the target keeps its own configuration (replicas, env, endpoints
    are per environment) and only gets the new image; a first promotion copies the source's spec.
    Overrides are applied next, as a JSON merge patch; image and environment cannot be overridden.
    A ``rollout`` given with the promotion replaces the spec's whole ``rollout`` (None removes it:
    a plain rolling update), so production can get a canary while dev keeps a plain update; the
    spec validation of the PUT path judges it afterwards.
    """
    base = copy.deepcopy(target_spec if target_spec is not None else source_spec)
    if overrides:
        base = merge_patch(base, {k: v for k, v in overrides.items() if k not in ("image", "environment")})
    if rollout is None:
        base.pop("rollout", None)
    elif not isinstance(rollout, Unset):
        base["rollout"] = copy.deepcopy(rollout)
    base["image"] = image
    base["environment"] = environment
    return dict(base)
