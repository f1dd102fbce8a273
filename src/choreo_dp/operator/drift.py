"""Does a live object still carry what we applied? (A cheap stand-in for a dry-run apply.)

Server-side apply only sets the fields we send; the API server adds defaults and other managers add
their own fields. So "in sync" means: every field of the desired manifest is present in the live
object with the same value. Lists must match element by element (our lists are atomic or keyed in
the order we render them).

Resource quantities are the exception to "the same value": the API server stores them in its
canonical form (``cpu: 0.5`` reads back as ``500m``, ``1024Mi`` as ``1Gi``, ``100u`` of a request
as ``1m``), so they are compared by the value the API server stores, not by their text. Only
where a quantity lives (the maps of resource names to quantities, and the few single quantity
fields): elsewhere ``"1000"`` and ``"1k"`` are different strings.
"""

from __future__ import annotations

from typing import Any

from choreo_dp.api.quantity import InvalidQuantity, parse_quantity, resource_quantity

# Keys whose value maps resource names to quantities: container resources and pod overhead,
# ResourceQuota hard/used, LimitRange items, node capacity.
RESOURCE_LISTS = frozenset(
    {
        "requests",
        "limits",
        "hard",
        "used",
        "default",
        "defaultRequest",
        "max",
        "min",
        "maxLimitRequestRatio",
        "overhead",
        "capacity",
        "allocatable",
    }
)
# Keys whose value is one quantity: emptyDir sizeLimit, HPA metric targets.
QUANTITY_FIELDS = frozenset({"sizeLimit", "averageValue"})


def contains(live: Any, desired: Any) -> bool:
    return _contains(live, desired, resource_list=False, quantity=False)


def _contains(live: Any, desired: Any, *, resource_list: bool, quantity: bool) -> bool:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(
            k in live
            and _contains(
                live[k],
                v,
                resource_list=k in RESOURCE_LISTS,
                quantity=resource_list or k in QUANTITY_FIELDS,
            )
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(
            _contains(lv, dv, resource_list=False, quantity=False)
            for lv, dv in zip(live, desired, strict=True)
        )
    if quantity and same_quantity(live, desired):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(live) == float(desired)
    return bool(live == desired)


def same_quantity(live: Any, desired: Any) -> bool:
    """Whether ``live`` is how the API server stores ``desired`` (False if either is no quantity)."""
    if isinstance(live, bool) or isinstance(desired, bool):
        return False
    if not isinstance(live, str | int | float) or not isinstance(desired, str | int | float):
        return False
    try:
        # Requests, limits and quotas are rounded up to milli-units when stored; nothing we render
        # elsewhere is finer than that, so one rule serves every quantity field.
        return parse_quantity(live) == parse_quantity(resource_quantity(desired))
    except InvalidQuantity:
        return False
