"""`make demo`: phalanx's story on this machine in about a minute (warm): baseline, scale, kill, resume.

    python -m demo [--node process|real] [--keep] [--since EPOCH]
    (PYTHONPATH with dev/, operator/, trainers/; as root)

demo.story tells it; demo.nodes says where the pods run: the process node (default: pods as local
processes) or the real node (`make demo NODE=real`: containerd, runc and the kubelet running the
trainer image of `make images`).
"""
