"""procnode: a Kubernetes node for tests and demos that runs its pods as local processes.

Not a kubelet and not part of phalanx: no images, no pulls, no cgroups. It runs a pod's container
command with the pod's env, in a mount+UTS namespace where /etc/hosts maps the pod names to per-pod
loopback addresses (127.0.0.N) and the pod's volumes are mounted at their paths. See docs/e2e.md.

CLI: python -m procnode --kubeconfig FILE (root). Tests and the demo use procnode.testing.
"""
