"""A real Kubernetes control plane for tests and the sandbox, from binaries built by tools/kube.

``RealCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
on 127.0.0.1; ``find_binaries`` locates the cache; ``workload_faults`` drives kwok Stages that
make pods crash-loop or fail their image pull, the way a real kubelet reports it.
"""

from choreo_sandbox.cluster.binaries import (
    BinariesMissing,
    KubeBinaries,
    binaries_available,
    find_binaries,
)
from choreo_sandbox.cluster.control_plane import RealCluster, serve_forever

__all__ = [
    "BinariesMissing",
    "KubeBinaries",
    "RealCluster",
    "binaries_available",
    "find_binaries",
    "serve_forever",
]
