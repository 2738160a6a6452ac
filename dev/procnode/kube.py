"""A small JSON client for the apiserver: what the node needs (get, create, patch, delete, watch).

The node avoids the generated `kubernetes` client on purpose: it needs a handful of calls on plain
dicts (strategic-merge patches of pod status, a streaming watch) and nothing else. Auth comes from
a kubeconfig: client certificate (embedded or a file), or a bearer token.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml

JSON = dict[str, Any]
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:400]}")
        self.status = status


class KubeClient:
    def __init__(self, kubeconfig: Path, timeout: float = 15.0) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        url = urlsplit(cluster["server"])
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"{kubeconfig}: only https servers are supported, got {cluster['server']}")
        self.host, self.port = url.hostname, url.port or 443
        self.timeout = timeout
        # ssl wants files: material embedded in the kubeconfig goes to a private temp dir.
        self._tmp = tempfile.TemporaryDirectory(prefix="procnode-kube-")
        self.ctx = ssl.create_default_context(cafile=self._file(cluster, "certificate-authority"))
        if cluster.get("insecure-skip-tls-verify"):
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        cert, key = self._file(user, "client-certificate"), self._file(user, "client-key")
        if cert and key:
            self.ctx.load_cert_chain(cert, key)
        self.headers = {"Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self._local = threading.local()

    def _file(self, section: dict[str, Any], key: str) -> str | None:
        if section.get(f"{key}-data"):
            path = Path(self._tmp.name) / key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(base64.b64decode(section[f"{key}-data"]))
            return str(path)
        value = section.get(key)
        return str(value) if value else None

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One call on this thread's keep-alive connection; raises ApiError on HTTP >= 400."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect(self.timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read().decode()
                break
            except (http.client.HTTPException, OSError):
                conn.close()  # a keep-alive connection the server closed: reconnect once
                self._local.conn = None
                if attempt == 2:
                    raise
        if resp.status >= 400:
            raise ApiError(resp.status, raw)
        return json.loads(raw) if raw.lstrip().startswith("{") else raw

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", _with_query(path, query))

    def create(self, path: str, body: JSON) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: JSON, content_type: str = SMP) -> Any:
        return self.request("PATCH", path, body, content_type)

    def delete(self, path: str, body: JSON | None = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60) -> Iterator[JSON]:
        """Events ({type, object}) from `path?watch=1` until the server ends the watch."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        conn = self._connect(timeout_seconds + 15.0)
        try:
            conn.request("GET", _with_query(path, query), headers=self.headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read().decode())
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    event: JSON = json.loads(line)
                    yield event
        finally:
            conn.close()


def _with_query(path: str, query: dict[str, Any]) -> str:
    query = {k: v for k, v in query.items() if v is not None}
    return f"{path}?{urlencode(query)}" if query else path
