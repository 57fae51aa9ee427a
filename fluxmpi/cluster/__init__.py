"""The local multi-node Slurm cluster: one network + UTS namespace per node on this machine."""

from .layout import ClusterLayout, LayoutError
from .local import ClusterError, ClusterStatus, LocalCluster
from .preflight import PreflightError

__all__ = ["ClusterLayout", "LayoutError", "LocalCluster", "ClusterError", "ClusterStatus", "PreflightError"]
