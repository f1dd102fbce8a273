"""Everything needed to run choreo-dp on one machine without a cluster: the data plane, the reference
control plane (:mod:`choreo_cp`) and an emulated (:mod:`kube_emulator`) or real Kubernetes API."""
