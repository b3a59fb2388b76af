"""What the API server refuses at admission (the CRD's schema and CEL rules), with the messages a user sees.

No operator runs here: a spec the operator could not realise must never be stored in the first place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_testing.kube_objects import get, namespace, wasminference

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

CRD = Path(__file__).resolve().parents[2] / "crds" / "kwasi.dev_wasminferences.yaml"


@pytest.fixture(scope="module")
def ns(cluster: Cluster) -> Iterator[str]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/wasminferences.kwasi.dev")
    with namespace(cluster, "admit") as name:
        yield name


def refused(cluster: Cluster, ns: str, body: dict[str, Any]) -> str:
    """The API server's refusal of ``body`` (asserting it stored nothing)."""
    proc = cluster.kubectl("-n", ns, "create", "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0, f"accepted: {body['metadata']}"
    assert get(cluster, ns, "wasminference", body["metadata"]["name"]) is None
    return proc.stderr


@pytest.mark.parametrize("name", ["a" * 70, "chat.v2", "7b-chat", "chat-"])
def test_names_the_children_cannot_carry_are_refused(cluster: Cluster, ns: str, name: str) -> None:
    # The name becomes the Service's name and a label value: a DNS-1035 label of at most 63 characters.
    err = refused(cluster, ns, wasminference(name))
    assert "metadata.name" in err and "63" in err and "lowercase letter" in err, err


def test_the_longest_usable_name_is_accepted(cluster: Cluster, ns: str) -> None:
    name = "a" + "b" * 62
    cluster.kubectl("-n", ns, "create", "-f", "-", input=json.dumps(wasminference(name)))
    cluster.kubectl("-n", ns, "delete", "wasminference", name)


@pytest.mark.parametrize("count", [0, 17, 1000])
def test_gpu_count_is_bounded(cluster: Cluster, ns: str, count: int) -> None:
    err = refused(cluster, ns, wasminference("gpus", gpu={"count": count}))
    assert "spec.gpu.count" in err and "between 1 and 16" in err, err


def test_negative_replicas_get_one_message(cluster: Cluster, ns: str) -> None:
    err = refused(cluster, ns, wasminference("neg", replicas=-1))
    lines = [line for line in err.splitlines() if "Invalid value" in line]
    assert len(lines) == 1 and "spec.replicas" in lines[0] and "non-negative" in lines[0], err
