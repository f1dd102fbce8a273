"""How a list merges: by key (``map``), as a set, or replaced whole (``atomic``).

Built-in kinds use the merge keys the real API declares (patchMergeKey /
listMapKeys) for the fields the product touches; custom resources read
``x-kubernetes-list-type`` / ``x-kubernetes-list-map-keys`` from the CRD schema.
"""

from __future__ import annotations

from kube_emulator.resources import ResourceType
from kube_emulator.schema import list_type_at

ListInfo = tuple[str, tuple[str, ...]]
ATOMIC: ListInfo = ("atomic", ())

_BY_FIELD: dict[str, ListInfo] = {
    "containers": ("map", ("name",)),
    "initContainers": ("map", ("name",)),
    "ephemeralContainers": ("map", ("name",)),
    "env": ("map", ("name",)),
    "volumes": ("map", ("name",)),
    "volumeMounts": ("map", ("mountPath",)),
    "volumeDevices": ("map", ("devicePath",)),
    "imagePullSecrets": ("map", ("name",)),
    "ownerReferences": ("map", ("uid",)),
    "conditions": ("map", ("type",)),
    "hostAliases": ("map", ("ip",)),
    "finalizers": ("set", ()),
}


def list_info(rt: ResourceType | None, path: tuple[str, ...]) -> ListInfo:
    if not path:
        return ATOMIC
    name = path[-1]
    if path == ("metadata", "finalizers"):
        return ("set", ())
    if path == ("metadata", "ownerReferences"):
        return ("map", ("uid",))
    if rt is not None and rt.crd is not None and path[0] != "metadata":
        found = list_type_at(rt.crd.schema, path)
        return found if found is not None else ATOMIC
    if name == "ports":
        parent = path[-2] if len(path) > 1 else ""
        if parent in ("containers", "initContainers", "ephemeralContainers"):
            return ("map", ("containerPort",))
        if rt is not None and rt.kind == "Service":
            return ("map", ("port",))
        return ATOMIC
    return _BY_FIELD.get(name, ATOMIC)
