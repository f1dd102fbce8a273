"""What a reconciler gets and what it gives back, in the manner of controller-runtime's ``reconcile``.

A reconciler is ``async def reconcile(ctx, request) -> Result``. It reads the watch-fed cache through
``ctx.cache`` (read-only: only watch events write the cache), writes to the cluster through
``ctx.kube``, reports problems through ``ctx.recorder`` and tells the controller what to do next
in its :class:`Result`. It never touches the work queue. An exception is an error the controller
retries with backoff, unless it is a :class:`TerminalError` (controller-runtime's
``reconcile.TerminalError``): retrying cannot help, so the key waits for the next event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from choreo_dp.api.vocabulary import OPERATOR_FIELD_MANAGER
from choreo_dp.kube.resources import Resource
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.keys import AppKey, DataPlaneKey, EnvKey, ObjKey, QueueKey
from choreo_dp.operator.rollout_probe import RolloutProbe
from choreo_dp.render import ClusterCapabilities

if TYPE_CHECKING:
    from choreo_dp.operator.state import CacheView, Record

COMPONENT = OPERATOR_FIELD_MANAGER


class KubeApi(Protocol):
    """The client calls reconcilers make (``choreo_dp.kube.KubeClient`` or a test's fake)."""

    async def get(
        self, res: Resource, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> dict[str, Any] | None: ...

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]: ...

    async def create(
        self, res: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]: ...

    async def apply(
        self,
        body: dict[str, Any],
        field_manager: str,
        *,
        force: bool = True,
        subresource: str | None = None,
    ) -> dict[str, Any]: ...

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: Literal["merge", "json", "strategic", "apply"] = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]: ...

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        propagation: Literal["Background", "Foreground", "Orphan"] = "Background",
        precondition_uid: str | None = None,
    ) -> bool: ...

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        component: str,
    ) -> None: ...


@dataclass(frozen=True)
class Result:
    """What the controller does with a key after a reconcile that did not raise.

    ``requeue_after``: look again after this many seconds even without an event (None: only on the
    next event or resync). ``enqueue``: other keys whose reconcile this one's outcome invalidated
    (an Environment that lost its namespace: its apps must check again).
    """

    requeue_after: float | None = None
    enqueue: tuple[ObjKey, ...] = ()


DONE = Result()


class TerminalError(Exception):
    """A failure that retrying cannot fix: logged and counted, never requeued with backoff."""


class EventRecorder:
    """Warning Events about an object, posted when the problem is new for it (not on every reconcile)."""

    def __init__(self, client: KubeApi, component: str = COMPONENT) -> None:
        self._client = client
        self._component = component
        self._warned: dict[QueueKey, str] = {}

    async def warn(self, key: QueueKey, involved: dict[str, Any], reason: str, message: str) -> None:
        if self._warned.get(key) == f"{reason}:{message}":
            return
        self._warned[key] = f"{reason}:{message}"
        await self._client.post_event(involved, "Warning", reason, message, self._component)

    def clear(self, key: QueueKey) -> None:
        """The object is healthy (or gone): its next problem is news again."""
        self._warned.pop(key, None)


@dataclass(frozen=True)
class ReconcileContext:
    """Everything a reconciler may use, and nothing of the controller's machinery.

    ``record`` is the reconcilers' own memory of what they wrote (the manifests they applied and
    the API's answers the watch has not delivered yet): theirs to write, unlike ``cache``.
    """

    kube: KubeApi  # the client (named so tests/helm's RBAC scan finds its calls)
    cache: CacheView
    record: Record
    config: OperatorConfig
    caps: ClusterCapabilities
    secrets: SecretsPort | None
    recorder: EventRecorder
    # The canary rollout's HTTP check and clock (replaceable: tests drive both).
    rollout_probe: RolloutProbe = field(default_factory=RolloutProbe)


K = TypeVar("K", AppKey, EnvKey, DataPlaneKey)
# ``async def reconcile(ctx, request) -> Result``, registered per key type with the controller.
Reconciler = Callable[[ReconcileContext, K], Awaitable[Result]]
