"""Promotion: the exact image (by digest) running in one place, deployed to another.

The image comes from the *reported* status of the source app, never from its desired spec: a tag in
the spec may have moved since, the digest the data plane reports is what actually runs.
"""

from __future__ import annotations

import copy
from typing import Any

DIGEST_MARK = "@sha256:"


class PromotionRefused(Exception):
    """The promotion cannot be carried out as asked (maps to 409)."""


def running_digest(status: dict[str, Any] | None, app: str, where: str) -> str:
    if not status:
        raise PromotionRefused(
            f"app {app!r} in {where} has no status reported by its data plane yet, so the running image "
            "digest is unknown; wait until it runs (GET the app to see its status) and retry"
        )
    image = status.get("image")
    if not isinstance(image, str) or DIGEST_MARK not in image:
        raise PromotionRefused(
            f"app {app!r} in {where} reports image {image!r}, which carries no @sha256: digest; "
            "promotion only moves images by digest"
        )
    return image


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
) -> dict[str, Any]:
    """The spec to PUT at the target.

    An app that already exists at the target keeps its own configuration (replicas, env, endpoints
    are per environment) and only gets the new image; a first promotion copies the source's spec.
    Overrides are applied last, as a JSON merge patch; image and environment cannot be overridden.
    """
    base = copy.deepcopy(target_spec if target_spec is not None else source_spec)
    if overrides:
        base = merge_patch(base, {k: v for k, v in overrides.items() if k not in ("image", "environment")})
    base["image"] = image
    base["environment"] = environment
    return dict(base)


def image_allowed(image: str, allowed_prefixes: list[str]) -> bool:
    return not allowed_prefixes or any(image.startswith(p) for p in allowed_prefixes)
