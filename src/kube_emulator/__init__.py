"""Emulated Kubernetes API server for tests and the sandbox (plain HTTP on loopback only).

Public API: ``ApiServer`` (async context manager), ``ApiServerThread`` (the same on a
background thread, for synchronous clients), ``serve_forever`` (the CLI loop behind
``choreo-dp sandbox apiserver``).  Fixtures for tests live in ``tests/fixtures/kube.py``.

Modules: ``resources`` (built-in resource table + CRD registry), ``discovery``,
``store`` (objects, resourceVersion, write semantics), ``admission`` (what happens between
decoding and storing: ``limitrange`` defaults and bounds, ``quota`` admission and its
controller, quantities through ``resourcelists``), ``schema`` (CRD prune/default/
validate) with ``cel`` (a CEL subset), ``patch`` (merge/JSON/strategic), ``fieldsets`` and
``apply`` (server-side apply, managedFields), ``selectors``, ``watch``, ``tables``
(server-side printing), ``gc`` (owner references, namespaces), ``simulator`` (Deployments
-> ReplicaSets -> Pods, status) with ``hpa`` (HPAs clamp Deployments into [min, max]; no
metrics), ``faults``, ``protobuf`` with ``protobuf_schema`` (the kubectl bodies that are not
JSON), ``timefields`` (Time/MicroTime decoding of built-ins), ``podlogs`` (kwok's
Logs/ClusterLogs and ``pods/log``), ``openapi``, ``app`` (HTTP routing), ``server``.
Every behaviour here is checked against a real kube-apiserver by ``tests/conformance``; what
differed, and what still does, is in ``docs/emulator-fidelity.md``.

Known simplifications, on purpose:
- No authentication or authorization: every request is allowed (SelfSubjectAccessReview says yes).
- JSON only, except protobuf *request bodies* for ConfigMap, Secret, Namespace,
  ServiceAccount, SelfSubjectAccessReview, Job, CronJob and Deployment (kubectl's typed
  ``create`` sub-commands, ``create job --from=cronjob/X``); other kinds get a 415 naming
  them (field numbers unknown to Kubernetes 1.36 are skipped, as kube-apiserver skips them).
- Discovery is the legacy form (clients asking for aggregated discovery fall back);
  ``/openapi/v2`` is an empty document (kubectl then skips client-side validation and
  strategic-merge metadata comes from kubectl's compiled-in types); no ``/openapi/v3``,
  so ``kubectl explain`` does not work.
- CEL ``x-kubernetes-validations``: only the subset in ``cel.py`` is enforced; rules
  outside it (``oldSelf`` transitions, macros) are skipped.
- Lists are served from the current state (continue tokens do not pin a snapshot);
  admission webhooks, conversion webhooks, most validation of built-in specs (quantities
  and container resources are checked), exec/attach/
  port-forward are absent.  Pod logs come from the files kwok's Logs/ClusterLogs name, as
  on a kwok cluster.
"""

from kube_emulator.server import ApiServer, ApiServerThread, serve_forever

__all__ = ["ApiServer", "ApiServerThread", "serve_forever"]
