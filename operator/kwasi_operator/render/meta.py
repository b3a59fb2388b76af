"""Names and labels every child of a WasmInference carries (the selector is how status finds its pods)."""

from __future__ import annotations

from collections.abc import Mapping

from kwasi_operator import kinds
from kwasi_operator.spec import FIELD_MANAGER, Obj

INSTANCE_LABEL = "kwasi.dev/wasminference"
SERVER_LABEL = "kwasi.dev/model-server"  # spec.modelServer's pods (render/nnrpc.py)
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kwasi-runtime",
        "app.kubernetes.io/instance": name,
        **MANAGED_BY,
        INSTANCE_LABEL: name,
    }


def selector(name: str) -> dict[str, str]:
    return {INSTANCE_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def meta(name: str, namespace: str) -> Obj:
    return {"name": name, "namespace": namespace, "labels": labels(name)}


def owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(namespace, name) of the WasmInference a child belongs to, from its labels (a model-server pod carries
    only the model-server label, render/nnrpc.py)."""
    instance = labels.get(INSTANCE_LABEL) or labels.get(SERVER_LABEL)
    return (namespace, instance) if namespace and instance else None


def child_key(kind: str, child: str, owner: str) -> str:
    """What the operator tracks a child by: its kind, or `Kind/name` for one not named after its owner's
    rule (spec.modelServer's <name>-model-server children)."""
    return kind if child == child_name(kind, owner) else f"{kind}/{child}"


def split_key(key: str, owner: str) -> tuple[str, str]:
    """(kind, child name) of a child_key."""
    kind, _, child = key.partition("/")
    return kind, child or child_name(kind, owner)


def child_name(kind: str, name: str) -> str:
    """Every child is named after its WasmInference, but the cache claim: a user's own PVC may well carry
    the app's name (its models), and applying over it would take it over."""
    return f"{name}-model-cache" if kind == "PersistentVolumeClaim" else name


def manifest(kind: kinds.Kind, name: str, namespace: str, spec: Obj, metadata: Obj | None = None) -> Obj:
    """A child of the WasmInference ``name``: its kind's apiVersion, name, labels (+ ``metadata``), ``spec``."""
    m = {**meta(name, namespace), "name": child_name(kind.kind, name)}  # labelled with the owner's name
    for key, value in (metadata or {}).items():
        m[key] = {**m.get(key, {}), **value}
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": m, "spec": spec}


def ref(kind: kinds.Kind, name: str) -> Obj:
    """A reference to the WasmInference's child of ``kind`` (scaleTargetRef, describedObject)."""
    return {"apiVersion": kind.api_version, "kind": kind.kind, "name": child_name(kind.kind, name)}
