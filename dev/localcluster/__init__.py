"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) with simulated GPU/TPU nodes from kwok. See docs/local-cluster.md.

CLI: python -m localcluster up|down|status (with dev/ on PYTHONPATH). Library: up(), down(), status().
"""

from localcluster.cluster import ClusterInfo, down, status, up
from localcluster.errors import BinariesMissing, ClusterError

__all__ = ["BinariesMissing", "ClusterError", "ClusterInfo", "down", "status", "up"]
