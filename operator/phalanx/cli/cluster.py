"""The CLI's only door to the Kubernetes API: the user's kubeconfig and context, as kubectl reads them.

Every API failure becomes a CliError with one line that names the problem (a bad kubeconfig, an
unreachable server, refused credentials, a missing CRD, a job that does not exist); nothing here
returns a half-read object. Objects come back as plain dicts with the API's own (camelCase) keys,
so the operator's readers (phalanx.core.observe) take them unchanged.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from phalanx.api.models import GROUP, KIND, PLURAL, VERSION
from phalanx.cli.errors import CliError
from phalanx.core import names

T = TypeVar("T")
Body = dict[str, Any]
CRD_NAME = f"{PLURAL}.{GROUP}"
TIMEOUT = (5.0, 30.0)  # connect, read: a dead server is reported in seconds, not minutes
METRICS_TIMEOUT = (3.0, 5.0)
FOLLOW_READ_TIMEOUT = 86400.0  # a quiet rank may print nothing for hours; the client takes no "never"


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


class Cluster:
    """A connection to one cluster through one kubeconfig context."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        cfg = kubernetes.client.Configuration()
        paths = _kubeconfig_paths(kubeconfig)
        existing = [p for p in paths if p.is_file()]
        self.namespace = "default"
        if not existing:
            if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
                kubernetes.config.load_incluster_config(client_configuration=cfg)
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                self.namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
            else:
                where = ", ".join(str(p) for p in paths)
                raise CliError(f"no kubeconfig at {where}: pass --kubeconfig FILE or set KUBECONFIG")
        else:
            joined = os.pathsep.join(str(p) for p in existing)
            try:
                kubernetes.config.load_kube_config(config_file=joined, context=context, client_configuration=cfg)
                contexts, active = kubernetes.config.list_kube_config_contexts(config_file=joined)
            except (kubernetes.config.ConfigException, yaml.YAMLError, OSError, KeyError, TypeError) as exc:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise CliError(f"bad kubeconfig {joined}: {detail}") from None
            chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
            self.namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
        self.server = cfg.host
        cfg.retries = 1  # urllib3 would retry a refused connection three times with back-off
        self.api = kubernetes.client.ApiClient(cfg)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    # --- failures -------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` with the API's failures turned into one-line CliErrors (404 is the caller's to judge)."""
        kwargs.setdefault("_request_timeout", TIMEOUT)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise CliError(self._refusal(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(f"cannot reach the API server at {self.server}: {_one_line(reason)}") from None

    def _refusal(self, exc: ApiException) -> str:
        message = _api_message(exc)
        if exc.status == 401:
            return f"the API server at {self.server} refused the kubeconfig's credentials (401 Unauthorized)"
        if exc.status == 403:
            return f"forbidden: {message}"
        return f"the API server answered {exc.status} {exc.reason}: {message}"

    def _missing(self, namespace: str | None, name: str | None = None) -> CliError:
        """A 404 on trainingjobs: the CRD is not installed, or the job does not exist."""
        try:
            self._call(self.custom.get_api_resources, GROUP, VERSION)  # 404: the API group is not served
        except ApiException:
            return CliError(
                f"the TrainingJob CRD ({CRD_NAME}) is not installed in this cluster: "
                "kubectl apply -f crds/ (or install the Helm chart)"
            )
        where = f' in namespace "{namespace}"' if namespace else ""
        return CliError(f'{CRD_NAME} "{name}" not found{where}')

    # --- reads ----------------------------------------------------------------------------------------

    def _raw(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Body:
        response = self._call(fn, *args, _preload_content=False, **kwargs)
        body: Body = json.loads(response.data)
        return body

    def job(self, namespace: str, name: str) -> Body:
        try:
            return self._raw(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        except ApiException:
            raise self._missing(namespace, name) from None

    def jobs(self, namespace: str | None) -> list[Body]:
        """The jobs of `namespace`, or of every namespace when it is None (-A)."""
        try:
            if namespace is None:
                listing = self._raw(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
            else:
                listing = self._raw(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        except ApiException:
            raise self._missing(namespace) from None
        items: list[Body] = listing.get("items") or []
        return items

    def pods(self, namespace: str, job: str) -> list[Body]:
        try:
            listing = self._raw(self.core.list_namespaced_pod, namespace, label_selector=names.selector(job))
        except ApiException as exc:
            raise CliError(f"listing the pods of {namespace}/{job}: {_api_message(exc)}") from None
        items: list[Body] = listing.get("items") or []
        return items

    def events(self, namespace: str, job: Body) -> list[Body]:
        """The Events the operator posted on `job` (kubectl describe shows the same), oldest first."""
        meta = job["metadata"]
        selector = f"involvedObject.kind={KIND},involvedObject.name={meta['name']},involvedObject.uid={meta['uid']}"
        try:
            listing = self._raw(self.core.list_namespaced_event, namespace, field_selector=selector)
        except ApiException:
            return []
        items: list[Body] = listing.get("items") or []
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def trainer_metrics(self, namespace: str, pods: list[tuple[str, str, int]]) -> dict[str, str | None]:
        """Each pod's /metrics text, by (name, ip, port); None where it did not answer.

        Read through the API server's pod proxy, as kubectl reaches pods. The API server never proxies
        to a loopback address (a local process node's pods have them): those, and only those, are read
        directly, which works from the machine the pods run on.
        """

        def read(pod: str, ip: str, port: int) -> str | None:
            try:
                response = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod}:{port}", namespace, "metrics", _preload_content=False, _request_timeout=METRICS_TIMEOUT
                )
                return str(response.data.decode("utf-8", "replace"))
            except ApiException as exc:
                if exc.status == 400 and ipaddress.ip_address(ip).is_loopback:
                    return _read_direct(ip, port)
                return None
            except (urllib3.exceptions.HTTPError, OSError):
                return None

        if not pods:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(pods))) as pool:
            texts = list(pool.map(lambda p: read(*p), pods))
        return {name: text for (name, _, _), text in zip(pods, texts, strict=True)}

    def log_lines(
        self, namespace: str, pod: str, follow: bool, timestamps: bool, tail: int | None = None
    ) -> Iterator[str]:
        """The trainer container's log, line by line; with `follow`, until the container ends."""
        kwargs: dict[str, Any] = {"container": names.TRAINER_CONTAINER, "follow": follow, "timestamps": timestamps}
        if tail is not None:
            kwargs["tail_lines"] = tail
        try:
            response = self._call(
                self.core.read_namespaced_pod_log,
                pod,
                namespace,
                _preload_content=False,
                _request_timeout=(TIMEOUT[0], FOLLOW_READ_TIMEOUT) if follow else TIMEOUT,
                **kwargs,
            )
        except ApiException as exc:
            raise CliError(f"logs of pod {namespace}/{pod}: {_api_message(exc)}") from None
        pending = b""
        try:
            while True:
                chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
        except (urllib3.exceptions.HTTPError, OSError):
            pass  # the stream ended with the container, or the pod was deleted
        finally:
            response.release_conn()
        if pending:
            yield pending.decode("utf-8", "replace")

    def close(self) -> None:
        self.api.close()


def _read_direct(ip: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=METRICS_TIMEOUT[1]) as response:
            return str(response.read(1 << 20).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _api_message(exc: ApiException) -> str:
    if exc.body:
        try:
            return _one_line(json.loads(exc.body).get("message", exc.body))
        except (ValueError, AttributeError):
            return _one_line(exc.body)
    return _one_line(exc.reason or exc)
