"""WasmInference manifests and read helpers shared by the end-to-end tests (kubectl against the real cluster)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_operator_dev.local import Kubectl, OperatorProcess, install, service_account_kubeconfig, wait_established
from kwasi_testing import REPO

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

SHA = "a" * 64
Obj = dict[str, Any]


def wasminference(name: str, **spec: Any) -> Obj:
    body: Obj = {
        "module": {"image": "registry.invalid/kwasi/chat:1"},
        "models": [{"name": "default", "encoding": "ggml", "target": "gpu",
                    "source": {"url": "https://models.invalid/smollm2.gguf", "sha256": SHA}}],
    }
    body.update(spec)
    return {"apiVersion": "kwasi.dev/v1alpha1", "kind": "WasmInference", "metadata": {"name": name}, "spec": body}


def get(cluster: Cluster, ns: str, *what: str) -> Obj | None:
    proc = cluster.kubectl("-n", ns, "get", *what, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    out: Obj = json.loads(proc.stdout)
    return out


def cond(obj: Obj | None, type_: str) -> Obj:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def wait_ready(cluster: Cluster, ns: str, name: str, timeout: float = 60) -> Obj:
    def ready() -> Obj | None:
        wi = get(cluster, ns, "wasminference", name)
        return wi if cond(wi, "Ready").get("status") == "True" else None

    return cluster.wait_until(ready, timeout, f"WasmInference {ns}/{name} Ready", interval=0.5)


def events(cluster: Cluster, ns: str, name: str) -> list[Obj]:
    selector = f"involvedObject.kind=WasmInference,involvedObject.name={name}"
    out = get(cluster, ns, "events", "--field-selector", selector)
    return list((out or {}).get("items", []))


def reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in events(cluster, ns, name)]


def children(cluster: Cluster, ns: str, name: str) -> dict[str, int]:
    """How many of each child kind carry the instance label."""
    out = get(cluster, ns, "deployments,services,poddisruptionbudgets,horizontalpodautoscalers,pods",
              "-l", f"kwasi.dev/wasminference={name}")
    counts: dict[str, int] = {}
    for item in (out or {}).get("items", []):
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts


@contextlib.contextmanager
def running_operator(cluster: Cluster, tmp: Path, *args: str) -> Iterator[OperatorProcess]:
    """The CRD and RBAC installed, and kwasi-operator running under its own ServiceAccount's token."""
    kubectl = Kubectl(cluster.kubeconfig, cluster.kubectl_path, cluster.env)
    install(kubectl)
    kubeconfig = service_account_kubeconfig(kubectl, tmp / "operator.kubeconfig")
    op = OperatorProcess(kubeconfig, tmp / "operator.log", ["--all-namespaces", *args]).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"\nkwasi-operator log: {op.log_path}")


@contextlib.contextmanager
def namespace(cluster: Cluster, prefix: str = "op") -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) afterwards."""
    name = cluster.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def uid(cluster: Cluster, ns: str, *what: str) -> str | None:
    obj = get(cluster, ns, *what)
    return obj["metadata"]["uid"] if obj else None


EXTRA_CRDS = REPO / "hack" / "cluster" / "extra-crds.sh"


@contextlib.contextmanager
def extra_crd(cluster: Cluster, which: str) -> Iterator[str]:
    """Another project's CRD (hack/cluster/extra-crds.sh: from its Go module), installed for the block and
    deleted after it (with every object of that kind); yields the CRD's name."""
    path = subprocess.run([str(EXTRA_CRDS), which], capture_output=True, text=True, check=True, timeout=900,
                          env=cluster.env).stdout.strip()
    name = cluster.kubectl("apply", "--server-side", "-f", path, "-o", "name").stdout.strip().split("/")[-1]
    try:
        wait_established(Kubectl(cluster.kubeconfig, cluster.kubectl_path, cluster.env), name)
        yield name
    finally:
        cluster.kubectl("delete", "crd", name, "--wait=true", check=False, timeout=120)


def wait_for(cluster: Cluster, ns: str, what: str, name: str, test: Callable[[Obj], bool], timeout: float,
             description: str) -> Obj:
    """Poll ``kubectl get WHAT NAME`` until ``test`` holds for it."""
    def check() -> Obj | None:
        obj = get(cluster, ns, what, name)
        return obj if obj is not None and test(obj) else None

    return cluster.wait_until(check, timeout, description, interval=0.2)


def operator_fixture(name: str, *args: str) -> Any:
    """A module-scoped ``operator`` fixture: kwasi-operator started with ``args`` for the module's tests."""
    @pytest.fixture(scope="module", name="operator")
    def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
        with running_operator(cluster, tmp_path_factory.mktemp(name), *args) as op:
            yield op

    return operator


def namespace_fixture(prefix: str) -> Any:
    """An ``ns`` fixture: a fresh namespace per test."""
    @pytest.fixture(name="ns")
    def ns(cluster: Cluster) -> Iterator[str]:
        with namespace(cluster, prefix) as made:
            yield made

    return ns
