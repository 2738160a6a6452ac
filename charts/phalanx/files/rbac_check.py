"""The `helm test` check: run as the operator's ServiceAccount, it asks the API server what it may do.

It checks, with SelfSubjectAccessReviews (what `kubectl auth can-i` sends), that the account can do
everything the operator does and nothing it must not (Secrets, editing job specs, exec, RBAC, tokens),
and lists TrainingJobs to prove the CRD is served and the binding is live. Exit 0 when every check
passes, 1 otherwise, one line per check.

The list of needs is written here from the operator's code, independently of templates/rbac.yaml,
so the chart's RBAC is checked against the operator rather than against itself.

In the pod it uses the mounted ServiceAccount token; elsewhere (the chart's tests) $KUBECONFIG.
Only the `kubernetes` client is needed: the operator image has it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True)
class Access:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespaced: bool = True

    def describe(self, namespace: str) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        res += f".{self.group}" if self.group else ""
        where = "" if not self.namespaced else f" in {namespace or 'all namespaces'}"
        return f"{self.verb} {res}{where}"


def accesses(
    verbs: str, resource: str, group: str = "", subresource: str = "", namespaced: bool = True
) -> list[Access]:
    return [Access(v, resource, group, subresource, namespaced) for v in verbs.split()]


# What operator/phalanx/controller does: kopf's watches (list+watch), kube.py's calls, kopf's events.
NEEDED = [
    *accesses("list watch delete", "trainingjobs", "phalanx.dev"),
    *accesses("patch", "trainingjobs", "phalanx.dev", "status"),
    *accesses("update", "trainingjobs", "phalanx.dev", "finalizers"),
    *accesses("get list watch create delete patch", "pods"),
    *accesses("list watch create", "services"),
    *accesses("list watch create", "persistentvolumeclaims"),
    *accesses("create", "events"),
    *accesses("list create delete", "workloads", "kueue.x-k8s.io"),
    *accesses("patch", "workloads", "kueue.x-k8s.io", "status"),
    *accesses("get", "resourceflavors", "kueue.x-k8s.io", namespaced=False),
    *accesses("get", "workloadpriorityclasses", "kueue.x-k8s.io", namespaced=False),
    *accesses("list create delete", "workloads", "scheduling.k8s.io"),
    *accesses("list create delete", "podgroups", "scheduling.k8s.io"),
    *accesses("get list watch", "nodes", namespaced=False),
    *accesses("list watch", "priorityclasses", "scheduling.k8s.io", namespaced=False),
    *accesses("list watch", "customresourcedefinitions", "apiextensions.k8s.io", namespaced=False),
]

# Leader election: one Lease, in the release namespace only.
LEASES = accesses("get create update", "leases", "coordination.k8s.io")

# kopf run --namespace: its namespace observer lists and watches namespaces.
NAMESPACED_INSTALL_NEEDS = accesses("list watch", "namespaces", namespaced=False)

# What it must never be able to do, wherever it is asked.
FORBIDDEN = [
    *accesses("get list watch create update patch delete", "secrets"),
    *accesses("create update patch", "trainingjobs", "phalanx.dev"),  # the spec is the user's
    *accesses("create", "pods", subresource="exec"),
    *accesses("create", "serviceaccounts", subresource="token"),
    *accesses("create bind escalate", "roles", "rbac.authorization.k8s.io"),
    *accesses("create bind escalate", "clusterroles", "rbac.authorization.k8s.io", namespaced=False),
    *accesses("create", "clusterrolebindings", "rbac.authorization.k8s.io", namespaced=False),
    *accesses("update patch delete", "nodes", namespaced=False),
    *accesses("update patch delete", "customresourcedefinitions", "apiextensions.k8s.io", namespaced=False),
    Access("*", "*", "*"),
]


def allowed(authz: client.AuthorizationV1Api, access: Access, namespace: str) -> bool:
    attributes: dict[str, Any] = {
        "verb": access.verb,
        "group": access.group,
        "resource": access.resource,
        "subresource": access.subresource,
    }
    if access.namespaced and namespace:
        attributes["namespace"] = namespace
    review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": attributes}})
    return bool(review.status.allowed)


def run(scope: str, watch_namespace: str, release_namespace: str, outside_namespace: str) -> list[str]:
    """Return the failed checks; print every check."""
    api = client.ApiClient()
    authz = client.AuthorizationV1Api(api)
    failures: list[str] = []

    def check(ok: bool, line: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
        if not ok:
            failures.append(line)

    where = "" if scope == "cluster" else watch_namespace
    needed = NEEDED + (NAMESPACED_INSTALL_NEEDS if scope == "namespace" else [])
    for access in needed:
        check(allowed(authz, access, where), f"can    {access.describe(where)}")
    elsewhere = [ns for ns in dict.fromkeys([outside_namespace, watch_namespace]) if ns and ns != release_namespace]
    for access in LEASES:
        check(allowed(authz, access, release_namespace), f"can    {access.describe(release_namespace)}")
        for ns in elsewhere if scope == "namespace" else [outside_namespace]:
            check(not allowed(authz, access, ns), f"cannot {access.describe(ns)}")
    # Secrets are refused everywhere: in the operator's own namespace, the watched one, cluster-wide.
    for ns in dict.fromkeys([release_namespace, watch_namespace, ""]):
        for access in FORBIDDEN:
            if access.namespaced or ns == "":
                check(not allowed(authz, access, ns), f"cannot {access.describe(ns)}")
    if scope == "namespace":
        # A namespaced install must not reach jobs or pods elsewhere.
        for access in accesses("list create", "pods") + accesses("list", "trainingjobs", "phalanx.dev"):
            for ns in (outside_namespace, ""):
                check(not allowed(authz, access, ns), f"cannot {access.describe(ns)}")
    # A real read: the TrainingJob API is served and the binding is in force.
    custom = client.CustomObjectsApi(api)
    try:
        if where:
            jobs = custom.list_namespaced_custom_object("phalanx.dev", "v1alpha1", where, "trainingjobs", limit=1)
        else:
            jobs = custom.list_cluster_custom_object("phalanx.dev", "v1alpha1", "trainingjobs", limit=1)
        check(True, f"listed trainingjobs.phalanx.dev in {where or 'all namespaces'} ({len(jobs['items'])} shown)")
    except ApiException as exc:
        check(False, f"list trainingjobs.phalanx.dev in {where or 'all namespaces'}: HTTP {exc.status} {exc.reason}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scope", choices=["cluster", "namespace"], required=True)
    parser.add_argument("--watch-namespace", required=True, help="the watched namespace (scope=namespace)")
    parser.add_argument("--release-namespace", required=True)
    parser.add_argument(
        "--outside-namespace", default="kube-system", help="a namespace a namespaced install must not reach"
    )
    args = parser.parse_args(argv)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    failures = run(args.scope, args.watch_namespace, args.release_namespace, args.outside_namespace)
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
