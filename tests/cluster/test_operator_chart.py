"""The Helm chart charts/kwasi-operator: lint, render, one CRD source, RBAC rules read from the plain manifests,
a server-side dry run of everything it renders, and a real `helm install` watching one namespace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kwasi_operator_dev.local import Kubectl, OperatorProcess, service_account_kubeconfig
from kwasi_testing.cluster import wait_until
from kwasi_testing.kube_objects import children, get, wait_ready, wasminference

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kwasi-operator"
CRD = REPO / "crds" / "kwasi.dev_wasminferences.yaml"
PLAIN_RBAC = REPO / "operator" / "deploy" / "rbac.yaml"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm(cluster: Cluster) -> str:
    found = shutil.which("helm", path=cluster.env["PATH"])
    assert found, f"helm not in the cluster's binary cache ({cluster.env.get('KWASI_CLUSTER_BIN')})"
    return found


def run_helm(helm: str, *args: str) -> str:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def render(helm: str, *args: str) -> list[Obj]:
    out = run_helm(helm, "template", "kwasi", str(CHART), "--namespace", "kwasi-system", *args)
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def test_lint(helm: str) -> None:
    out = run_helm(helm, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


def test_crd_is_the_one_in_crds(helm: str) -> None:
    link = CHART / "crds" / CRD.name
    assert link.is_symlink() and link.resolve() == CRD.resolve()  # no copy to drift
    crds = by_kind(render(helm, "--include-crds"), "CustomResourceDefinition")
    assert crds == [yaml.safe_load(CRD.read_text())]
    packaged = subprocess.run([helm, "show", "crds", str(CHART)], capture_output=True, check=True)
    assert CRD.read_bytes() in packaged.stdout  # byte-identical as shipped


def _rules(docs: list[Obj]) -> list[Obj]:
    return sorted((r for d in by_kind(docs, "ClusterRole") for r in d["rules"]), key=json.dumps)


def test_rbac_rules_come_from_the_plain_manifests(helm: str, tmp_path: Path) -> None:
    link = CHART / "files" / PLAIN_RBAC.name
    assert link.is_symlink() and link.resolve() == PLAIN_RBAC.resolve()  # read, not copied
    plain = [d for d in yaml.safe_load_all(PLAIN_RBAC.read_text()) if d]
    assert _rules(render(helm)) == _rules(plain) and len(_rules(plain)) >= 10
    run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))  # as shipped: the link resolved
    [package] = tmp_path.glob("kwasi-operator-*.tgz")
    out = run_helm(helm, "template", "kwasi", str(package), "--namespace", "kwasi-system")
    assert _rules([d for d in yaml.safe_load_all(out) if d]) == _rules(plain)
    # Watching named namespaces: RoleBindings there, no cluster-wide binding of the main role.
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert sorted(rb["metadata"]["namespace"] for rb in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == [
        "kwasi-kwasi-operator-crd-discovery"]
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_operator_deployment_is_hardened_single_replica(helm: str) -> None:
    dep = by_kind(render(helm), "Deployment")[0]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--all-namespaces" in c["args"] and "--bind-address=0.0.0.0" in c["args"]
    assert pod["serviceAccountName"] == by_kind(render(helm), "ServiceAccount")[0]["metadata"]["name"]


def test_rendered_chart_accepted_by_the_api_server(cluster: Cluster, helm: str) -> None:
    ns = cluster.create_namespace(f"chart-{uuid.uuid4().hex[:6]}")
    try:
        out = run_helm(helm, "template", "kwasi", str(CHART), "--namespace", ns)
        applied = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=out).stdout
        for what in ("serviceaccount/", "clusterrole.rbac.authorization.k8s.io/", "deployment.apps/", "service/"):
            assert what in applied, applied
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_chart_installed_and_run_watching_one_namespace(cluster: Cluster, helm: str,
                                                         tmp_path: Path) -> None:
    """`helm install` for real with watchNamespaces: the operator's pod runs (on the kwok CPU node), and the
    operator run with the chart's own ServiceAccount token and the args from the chart's Deployment
    reconciles its namespace, leaves the other alone, and could not touch it anyway."""
    tag = uuid.uuid4().hex[:6]
    system, team_a, team_b = (cluster.create_namespace(f"{p}-{tag}") for p in ("kwasi-sys", "team-a", "team-b"))
    release = f"kw{tag}"
    kube = ("--kubeconfig", str(cluster.kubeconfig))
    op: OperatorProcess | None = None
    try:
        run_helm(helm, "install", release, str(CHART), "-n", system, *kube, "--set", f"watchNamespaces={{{team_a}}}",
                 "--set", "operator.resyncSeconds=2", "--wait", "--timeout", "90s")
        deployment = cluster.get_json("-n", system, "deployment", "-l", f"app.kubernetes.io/instance={release}")
        [dep] = deployment["items"]
        assert dep["status"]["readyReplicas"] == 1  # helm --wait: the pod ran (kwok plays the kubelet)
        pod = dep["spec"]["template"]["spec"]
        sa_name, container = pod["serviceAccountName"], pod["containers"][0]
        assert f"--namespace={team_a}" in container["args"] and "--all-namespaces" not in container["args"]

        sa_user = f"system:serviceaccount:{system}:{sa_name}"

        def can(*args: str) -> bool:
            return cluster.kubectl("auth", "can-i", *args, "--as", sa_user, check=False).stdout.strip() == "yes"

        assert can("create", "deployments.apps", "-n", team_a) and can("watch", "pods", "-n", team_a)
        assert not can("create", "deployments.apps", "-n", team_b) and not can("watch", "pods", "-n", team_b)
        assert not can("watch", "wasminferences.kwasi.dev", "-A")  # RoleBindings only, no cluster-wide grant

        kubectl = Kubectl(cluster.kubeconfig, cluster.kubectl_path, cluster.env)
        kubeconfig = service_account_kubeconfig(kubectl, tmp_path / "sa.kubeconfig", namespace=system,
                                                service_account=sa_name)
        # The chart's args as they are, but serving /healthz and /metrics on loopback (ports chosen per test).
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", [*container["args"], "--bind-address=127.0.0.1"])
        op.start()
        cluster.apply(wasminference("mine"), namespace=team_a)
        cluster.apply(wasminference("theirs"), namespace=team_b)
        wait_ready(cluster, team_a, "mine")
        assert children(cluster, team_a, "mine") == {"Deployment": 1, "Service": 1, "Pod": 1}
        wait_until(lambda: 'kwasi_operator_reconciles_total{result="ok",trigger="resync"}' in op.metrics() or None,
                   20, "a resync pass")
        assert children(cluster, team_b, "theirs") == {}  # never seen: not watched
        assert (get(cluster, team_b, "wasminference", "theirs") or {}).get("status") is None
        denials = re.findall(r"cannot (?:get|list|watch|create|patch|update|delete) resource .{0,80}", op.log())
        assert not denials, denials
    finally:
        if op is not None:
            op.stop()
        run_helm(helm, "uninstall", release, "-n", system, *kube, "--wait")
        for ns in (system, team_a, team_b):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert cluster.kubectl("get", "clusterrole", f"{release}-kwasi-operator", check=False).returncode != 0
