"""The peer for bench/operator.py: the least a controller can do for a new WasmInference.

One watch, and for each new object one server-side apply of the same Deployment kwasi-operator renders
(owner reference included, 32 in flight), with the official kubernetes client's asyncio API configured as
kwasi-operator's (custom-objects calls: plain dicts, no model classes; no proxy/netrc lookup per request).
No Service, status, events, indices, retries or resync. Its create->Deployment latency is the floor the
cluster and this machine set for any controller.

  KUBECONFIG=... python bench/bare_controller.py
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio import watch as k8s_watch
from kubernetes.aio.client.exceptions import ApiException

from kwasi_operator import kinds
from kwasi_operator.render import deployment as render_deployment
from kwasi_operator.spec import FIELD_MANAGER, Obj, Spec

IN_FLIGHT = 32
WI = kinds.WASM_INFERENCE


async def main() -> None:
    config = k8s.Configuration()
    await k8s_config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    config.client_session_kwargs = {"trust_env": False}  # as kwasi-operator: no proxy/netrc lookup per request
    custom = k8s.CustomObjectsApi(k8s.ApiClient(config))
    writes = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async def deploy(obj: Obj) -> None:
        meta = obj["metadata"]
        deployment = render_deployment(meta["name"], meta["namespace"], Spec.parse(obj["spec"]))
        deployment["metadata"]["ownerReferences"] = [{
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}]
        async with writes:
            await custom.patch_namespaced_custom_object(
                "apps", "v1", meta["namespace"], "deployments", meta["name"], deployment,
                field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml")

    while True:  # the CRD may be new: its watch cache answers 429 until it is initialised
        try:
            await custom.list_cluster_custom_object(WI.group, WI.version, WI.plural, limit=1)
        except (ApiException, aiohttp.ClientError, OSError):
            await asyncio.sleep(0.2)
            continue
        break
    print("watching", flush=True)
    while True:
        try:
            async for event in k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object, WI.group, WI.version, WI.plural):
                if event["type"] == "ADDED":
                    task = asyncio.create_task(deploy(event["raw_object"]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (ApiException, aiohttp.ClientError, OSError) as e:  # e.g. 429 while the watch cache initialises
            print(f"watch: {e}; again in 1 s", file=sys.stderr, flush=True)
            await asyncio.sleep(1)


if __name__ == "__main__":
    asyncio.run(main())
