"""The chart's RBAC, read statically and asked of the real apiserver.

- Everything the operator watches (its kopf registry) is granted list+watch: a new watch in the code
  without a rule in the chart fails here, not on a customer's cluster.
- The chart grants exactly the accesses the helm-test check (files/rbac_check.py, written from the
  operator's code) says the operator needs: nothing more.
- No Secrets, no wildcards, in either scope; `kubectl auth can-i` as the ServiceAccount agrees.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from localcluster.testing import Kubectl
from tests.helm.release import RBAC_CHECK, SERVICE_ACCOUNT, render

SCOPES = {"cluster": {}, "namespace": {"scope": "namespace", "watchNamespace": "ml-jobs"}}
Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def rbac_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rbac_check", RBAC_CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def operator_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules granted to the operator's ServiceAccount (not the aggregated roles for people)."""
    docs = render(values, extra=["--show-only=templates/rbac.yaml"])
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    return [
        rule
        for d in docs
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] in bound
        for rule in d["rules"]
    ]


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def watched_resources() -> set[tuple[str | None, str]]:
    from phalanx.controller.handlers import build_registry
    from phalanx.controller.operator import Operator

    registry = build_registry(Operator())
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    return {(h.selector.group, str(h.selector.plural or h.selector.any_name)) for h in handlers if h.selector}


@pytest.mark.parametrize("scope", SCOPES)
def test_everything_the_operator_watches_is_granted_list_and_watch(scope: str, kubectl: Kubectl) -> None:
    # Resolve names like "pods" to their API group the way kopf does: from the server's discovery.
    group_of: dict[str, str] = {}
    for resource in kubectl("api-resources", "-o", "name").stdout.split():
        plural, _, group = resource.partition(".")
        group_of.setdefault(plural, group)
    granted = grants(operator_rules(SCOPES[scope]))
    for watched_group, plural in sorted(watched_resources(), key=str):
        api_group = watched_group if watched_group is not None else group_of[plural]
        for verb in ("list", "watch"):
            assert (api_group, plural, verb) in granted, f"the operator watches {plural}.{api_group}; add {verb}"


@pytest.mark.parametrize("scope", SCOPES)
def test_chart_grants_exactly_what_the_operator_needs(scope: str) -> None:
    check = rbac_check()
    # The Lease grants are a Role in the release namespace; helm test checks they reach nowhere else.
    needed = check.NEEDED + check.LEASES + (check.NAMESPACED_INSTALL_NEEDS if scope == "namespace" else [])
    wanted = {(a.group, a.resource + (f"/{a.subresource}" if a.subresource else ""), a.verb) for a in needed}
    assert grants(operator_rules(SCOPES[scope])) == wanted


@pytest.mark.parametrize("scope", SCOPES)
def test_no_secrets_and_no_wildcards(scope: str) -> None:
    docs = render(SCOPES[scope], extra=["--show-only=templates/rbac.yaml"])
    for doc in docs:
        for rule in doc.get("rules", []):
            values = [*rule["apiGroups"], *rule["resources"], *rule["verbs"], *rule.get("resourceNames", [])]
            assert "*" not in values, f"wildcard in {doc['metadata']['name']}: {rule}"
            assert not any(r.split("/")[0] == "secrets" for r in rule["resources"]), rule
            assert "nonResourceURLs" not in rule


def test_kubectl_auth_can_i_shows_no_secret_access(chart_install: str, kubectl: Kubectl) -> None:
    who = f"--as=system:serviceaccount:{chart_install}:{SERVICE_ACCOUNT}"
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        for where in (["-A"], ["-n", chart_install], ["-n", "default"]):
            out = kubectl("auth", "can-i", verb, "secrets", *where, who, check=False)
            assert out.stdout.strip() == "no" and out.returncode == 1, (verb, where, out.stdout, out.stderr)
    listing = kubectl("auth", "can-i", "--list", "-n", chart_install, who).stdout
    assert "secrets" not in listing
    # ...while what it needs is there (the listing is what the RBAC-only lifecycle test relies on).
    for resource in ("pods", "trainingjobs.phalanx.dev", "trainingjobs.phalanx.dev/status", "nodes"):
        assert resource in listing, listing


def test_rbac_check_script_imports_only_stdlib_and_kubernetes() -> None:
    """The hook runs in the operator image: it may import only the standard library and `kubernetes`."""
    import ast

    tree = ast.parse(Path(RBAC_CHECK).read_text())
    roots = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert roots - set(sys.stdlib_module_names) == {"kubernetes"}
