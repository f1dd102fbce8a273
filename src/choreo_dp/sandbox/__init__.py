"""Everything needed to run choreo-dp on one machine without a cluster.

``choreo_dp.sandbox.apiserver`` holds the emulated Kubernetes API server.
"""
