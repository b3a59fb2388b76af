"""Steps of the user's journey shared by test_journey.py and test_journey_bad_paths.py: find a WasmInference's
pods, wait until it serves (watching the pod's /readyz meanwhile), ask it with the official `openai` client,
query Prometheus."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import TYPE_CHECKING, Any

import yaml
from openai import OpenAI

from kwasi_testing import REPO
from kwasi_testing.kube_objects import cond, get

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

SAMPLES = REPO / "operator" / "deploy" / "samples"
CPU_SAMPLE = SAMPLES / "smollm2-cpu.yaml"
NAME = yaml.safe_load(CPU_SAMPLE.read_text())["metadata"]["name"]
QUESTION = "What is the capital of France?"
# The first start creates the container from a 5 GB image and loads torch and the model (on 2 busy cores).
START_TIMEOUT_S = 300
Obj = dict[str, Any]


def say(title: str, body: str = "") -> None:
    print(f"\n== {title}\n{body}".rstrip(), flush=True)


def pods(cluster: Cluster, ns: str, name: str) -> list[Obj]:
    out = get(cluster, ns, "pods", "-l", f"kwasi.dev/wasminference={name}")
    return [p for p in (out or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def pod_ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def prom_query(cluster: Cluster, query: str) -> list[Obj]:
    url = f"{cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


class ReadyzProbe:
    """Asks a pod's /readyz every 50 ms from another thread and remembers every answer with its time."""

    def __init__(self) -> None:
        self.ip: str | None = None
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            if self.ip:
                status, body = http_get(f"http://{self.ip}:8080/readyz", timeout=1)
                self.answers.append((time.time(), status, body))


def wait_serving(cluster: Cluster, ns: str, name: str, not_uid: str | None = None) -> tuple[Obj, ReadyzProbe]:
    """Waits until the WasmInference is Ready for its current generation with one Ready pod (other than
    `not_uid`); returns that pod and the /readyz answers of it seen until then."""
    probe = ReadyzProbe()

    def ready() -> Obj | None:
        wi = get(cluster, ns, "wasminference", name)
        live = [p for p in pods(cluster, ns, name) if p["metadata"]["uid"] != not_uid]
        if len(live) == 1 and live[0].get("status", {}).get("podIP"):
            probe.ip = live[0]["status"]["podIP"]
        current = wi is not None and wi.get("status", {}).get("observedGeneration") == wi["metadata"]["generation"]
        if current and cond(wi, "Ready").get("status") == "True" and len(live) == 1 and pod_ready(live[0]):
            return live[0]
        return None

    try:
        pod = cluster.wait_until(ready, START_TIMEOUT_S, f"WasmInference {ns}/{name} serving", interval=0.3)
    finally:
        probe.stop.set()
    return pod, probe


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ask(pod: Obj) -> tuple[str, int]:
    client = OpenAI(base_url=f"http://{pod['status']['podIP']}:8080/v1", api_key="not-checked", timeout=120)
    done = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], max_tokens=48, temperature=0, seed=1)
    assert done.usage is not None and done.choices[0].message.content
    return done.choices[0].message.content, done.usage.completion_tokens
