"""Free loopback ports, picked at start so several clusters (a dev one, a test run's) coexist."""

from __future__ import annotations

import socket


def pick_free_ports(n: int) -> list[int]:
    """n distinct ports the kernel calls free right now on 127.0.0.1.

    All sockets stay open until every port is picked, so the kernel cannot hand out one twice. A port
    can still be taken by someone else before the component binds it: the starter then reports which
    component lost its port (see cluster.py) and the user reruns `up`.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
