"""The journey's bad paths on the real node: an image missing on the node, a model whose digest does not match,
a model file that is not there, a guest that traps at start. Each shows in the WasmInference's
status.conditions with a reason and the container's own message, and nothing else in the namespace changes.
The same model fetched with its real sha256 from an HTTP server on this machine serves: the init container
path works, and fails only for the wrong digest."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kwasi_runtime.sample_models import smollm2_gguf
from kwasi_testing.cluster import wait_until
from kwasi_testing.guests import wat_guest
from kwasi_testing.journey import CPU_SAMPLE, START_TIMEOUT_S, ask, pods, say, wait_serving
from kwasi_testing.kube_objects import children, cond, get

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster, Journey

Obj = dict[str, Any]
# Everything in the namespace apart from the WasmInference under test and what it makes.
KINDS = "wasminferences,configmaps,secrets,services,deployments,replicasets,pods,serviceaccounts,roles,rolebindings"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def model_server(journey: Journey) -> Iterator[str]:
    """The GGUF over HTTP on the real node's bridge address (the only host address pods can reach)."""
    model = smollm2_gguf()
    handler = functools.partial(QuietHandler, directory=str(model.parent))
    server = http.server.ThreadingHTTPServer((journey.cluster.node_ip, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{journey.cluster.node_ip}:{server.server_address[1]}/{model.name}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def bystanders(journey: Journey) -> str:
    """Objects the bad paths must leave alone: a ConfigMap, a Secret and a Service of someone else."""
    c, ns = journey.cluster, journey.bad
    c.kubectl("-n", ns, "create", "configmap", "bystander", "--from-literal=k=v")
    c.kubectl("-n", ns, "create", "secret", "generic", "bystander", "--from-literal=k=v")
    c.kubectl("-n", ns, "create", "service", "clusterip", "bystander", "--tcp=80:8080")
    return ns


def snapshot(cluster: Cluster, ns: str) -> dict[str, str]:
    out = get(cluster, ns, KINDS) or {}
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in out.get("items", [])}


def sample(name: str, edit: Callable[[Obj], None]) -> Obj:
    doc: Obj = copy.deepcopy(yaml.safe_load(CPU_SAMPLE.read_text()))
    doc["metadata"]["name"] = name
    edit(doc["spec"])
    return doc


def failing_with(journey: Journey, doc: Obj, reason: str, *message_parts: str) -> Obj:
    """Applies `doc`, waits until its Ready condition is False with `reason` and a message holding every part,
    deletes it, and checks that nothing else in the namespace was touched (compared by resourceVersion)."""
    c, ns, name = journey.cluster, journey.bad, doc["metadata"]["name"]
    before = snapshot(c, ns)
    c.apply(doc, namespace=ns)

    def reported() -> Obj | None:
        ready = cond(get(c, ns, "wasminference", name), "Ready")
        return ready if ready.get("reason") == reason and all(p in ready.get("message", "") for p in message_parts) \
            else None

    try:
        ready = wait_until(reported, START_TIMEOUT_S, f"{name}: Ready=False/{reason} naming {message_parts}",
                           interval=1)
    except AssertionError:
        raise AssertionError(f"{name}: status {(get(c, ns, 'wasminference', name) or {}).get('status')}") from None
    say(f"{name}: Ready={ready['status']} reason={ready['reason']}", ready["message"])
    assert ready["status"] == "False"
    assert {p["spec"].get("nodeName") for p in pods(c, ns, name)} == {c.real_node}  # it really ran, and failed
    c.kubectl("-n", ns, "delete", "wasminference", name)
    wait_until(lambda: not children(c, ns, name) or None, 120, f"every child of {name} gone")
    after = snapshot(c, ns)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    return ready


def test_image_missing_on_the_node(journey: Journey, bystanders: str) -> None:
    def edit(spec: Obj) -> None:
        spec["runtime"]["image"] = "localhost/kwasi-runtime:not-built"

    failing_with(journey, sample("image-missing", edit), "ImagePullFailed", "localhost/kwasi-runtime:not-built")


def test_model_digest_mismatch(journey: Journey, bystanders: str, model_server: str) -> None:
    wrong = hashlib.sha256(b"not the model").hexdigest()

    def edit(spec: Obj) -> None:
        spec["models"][0]["source"] = {"url": model_server, "sha256": wrong}

    ready = failing_with(journey, sample("digest-mismatch", edit), "FetchFailed", f"expected {wrong}")
    assert hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest() in ready["message"]  # what it got instead


def test_model_file_absent(journey: Journey, bystanders: str) -> None:
    def edit(spec: Obj) -> None:
        spec["models"][0]["source"]["image"]["path"] = "SmolLM2-missing.gguf"

    failing_with(journey, sample("model-absent", edit), "RuntimeFailed", "model file not found",
                 "SmolLM2-missing.gguf")


def test_guest_that_traps_at_start(journey: Journey, bystanders: str) -> None:
    c, ns = journey.cluster, journey.bad
    wasm = base64.b64encode(wat_guest("start_trap")).decode()
    c.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trap-guest"},
             "binaryData": {"start_trap.wasm": wasm}}, namespace=ns)

    def edit(spec: Obj) -> None:
        spec["module"] = {"configMap": {"name": "trap-guest", "key": "start_trap.wasm"}, "path": "start_trap.wasm"}

    try:
        failing_with(journey, sample("trap-at-start", edit), "RuntimeFailed", "start_trap.wasm cannot be instantiated",
                     "unreachable")
    finally:
        c.kubectl("-n", ns, "delete", "configmap", "trap-guest")


def test_the_same_model_fetched_with_its_real_digest_serves(journey: Journey, model_server: str) -> None:
    c, ns = journey.cluster, journey.bad
    digest = hashlib.sha256(Path(smollm2_gguf()).read_bytes()).hexdigest()

    def edit(spec: Obj) -> None:
        spec["models"][0]["source"] = {"url": model_server, "sha256": digest}

    c.apply(sample("fetched", edit), namespace=ns)
    try:
        pod, _ = wait_serving(c, ns, "fetched")
        [init] = pod["status"]["initContainerStatuses"]
        assert init["name"].startswith("fetch-") and init["state"]["terminated"]["exitCode"] == 0
        assert "Paris" in ask(pod)[0]
    finally:
        c.kubectl("-n", ns, "delete", "wasminference", "fetched")
