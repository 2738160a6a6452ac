"""phalanx: a Kubernetes operator for distributed training.

This package must stay importable without kopf or the Kubernetes client: the trainer runtime
imports `phalanx.contract` inside the training pods.
"""

__version__ = "0.1.0"
