"""The kubelet's log endpoint, so `kubectl logs [-f]` works for pods on the process node.

The apiserver proxies `kubectl logs` to https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>
/containerLogs/<ns>/<pod>/<container>. It verifies the kubelet's certificate only when started with
--kubelet-certificate-authority (the local cluster does not), so a self-signed one does. The server
listens on 127.0.0.1 only and serves nothing but the node's pod logs (tailLines, follow, limitBytes).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from procnode import host

if TYPE_CHECKING:
    from procnode.node import ProcessNode

log = logging.getLogger("procnode.logs")


def serve_logs(node: ProcessNode, tls_dir: Path) -> int:
    """Start the endpoint in a daemon thread; its port, or 0 when it could not (no openssl)."""
    pair = host.make_serving_cert(tls_dir)
    if pair is None:
        log.warning("openssl not found: `kubectl logs` will not work; logs are in %s", node.logs_dir)
        return 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair[0]), str(pair[1]))

    class Handler(_LogHandler):
        owner = node

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    port: int = server.server_address[1]
    return port


class _LogHandler(BaseHTTPRequestHandler):
    owner: ProcessNode

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "procnode serves /containerLogs/<namespace>/<pod>/<container> only")
            return
        _, ns, pod, container = parts
        entry = self.owner.log_index.get((ns, pod, container))
        if entry is None:
            self.send_error(404, f"no logs for container {container} of pod {ns}/{pod} on this node")
            return
        path, uid = entry
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        follow = q.get("follow") in ("true", "1")
        tail = int(q["tailLines"]) if q.get("tailLines", "").isdigit() else None
        limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._stream(path, uid, container, follow, tail, limit)

    def _stream(self, path: Path, uid: str, container: str, follow: bool, tail: int | None, limit: int | None) -> None:
        with open(path, "rb") as fh:
            data = fh.read()
            if tail is not None:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-tail:]) if tail else b""
            sent = 0
            while True:
                if limit is not None:
                    data = data[: max(limit - sent, 0)]
                if data:
                    self.wfile.write(data)
                    self.wfile.flush()
                    sent += len(data)
                if not follow or (limit is not None and sent >= limit):
                    return
                run = self.owner.runs.get(uid)
                c = run.containers.get(container) if run else None
                if c is None or c.outcome is not None:
                    rest = fh.read()
                    if rest:
                        self.wfile.write(rest)
                    return
                time.sleep(0.2)
                data = fh.read()
