"""Push-time checks of an app's spec.connections against what the control plane holds.

Only what is certainly wrong is refused (422): a connection to the app itself, and one to a
``Project`` endpoint of an app of another project when both apps are known here. A target that is
not pushed yet, or lacks the endpoint, may come later: the operator then resolves it (and reports
``ConnectionUnresolved`` until it does), so pushing a caller before its target works.
"""

from __future__ import annotations

from pydantic import ValidationError

from choreo_cp.api.http import body_error
from choreo_cp.context import ControlPlane
from choreo_cp.store import KIND_APP, object_key
from choreo_dp.api import ChoreoAppSpec
from choreo_dp.api.connections import visibility_refusal


async def check_connections(cp: ControlPlane, dp: str, env: str, app: str, spec: ChoreoAppSpec) -> None:
    for index, conn in enumerate(spec.connections):
        loc = ("body", "spec", "connections", index)
        if conn.app == app:
            raise body_error(
                (*loc, "app"), f"connection {conn.name}: an app cannot connect to itself", conn.app
            )
        found = await cp.store.object_reports(dp, key=object_key(KIND_APP, env, conn.app))
        if not found:
            continue
        try:
            target = ChoreoAppSpec.model_validate(found[0].object.spec)
        except ValidationError:
            continue  # stored by an older version: nothing certain to judge by
        if conn.project is not None and conn.project != target.project:
            continue  # the target may yet be pushed into the named project; the operator judges it
        endpoint = next((e for e in target.endpoints if e.name == conn.endpoint), None)
        if endpoint is None:
            continue
        refusal = visibility_refusal(spec.project, conn, target.project, endpoint.visibility)
        if refusal is not None:
            raise body_error((*loc, "endpoint"), f"{refusal} (Environment {env!r})", conn.endpoint)
