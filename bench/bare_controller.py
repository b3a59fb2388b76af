"""The peer for bench/operator.py: the least a controller can do for a new WasmInference.

One watch, and for each new object one server-side apply of the same Deployment kwasi-operator renders
(owner reference included, 32 in flight). No Service, status, events, indices, retries or resync. Its
create->Deployment latency is the floor the cluster and this machine set for any controller.

  KUBECONFIG=... python bench/bare_controller.py
"""

from __future__ import annotations

import asyncio
import sys

import httpx2
from lightkube import AsyncClient, KubeConfig, codecs
from lightkube.core.exceptions import ApiError

from kwasi_operator.kube import WasmInference
from kwasi_operator.render import render
from kwasi_operator.spec import FIELD_MANAGER, Obj, Spec

IN_FLIGHT = 32


async def main() -> None:
    client = AsyncClient(KubeConfig.from_env(), field_manager=FIELD_MANAGER)
    writes = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async def deploy(obj: Obj) -> None:
        meta = obj["metadata"]
        deployment = render(meta["name"], meta["namespace"], Spec.parse(obj["spec"]), False)[0]
        deployment["metadata"]["ownerReferences"] = [{
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}]
        async with writes:
            await client.apply(codecs.from_dict(deployment), force=True)

    while True:  # the CRD may be new: its watch cache answers 429 until it is initialised
        try:
            async for _ in client.list(WasmInference, namespace="*"):
                break
        except (ApiError, httpx2.HTTPError, OSError):
            await asyncio.sleep(0.2)
            continue
        break
    print("watching", flush=True)
    while True:
        try:
            async for kind, obj in client.watch(WasmInference, namespace="*"):
                if kind == "ADDED":
                    task = asyncio.create_task(deploy(obj.to_dict()))  # type: ignore[no-untyped-call]
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (ApiError, httpx2.HTTPError, OSError) as e:  # e.g. 429 while the CRD's watch cache initialises
            print(f"watch: {e}; again in 1 s", file=sys.stderr, flush=True)
            await asyncio.sleep(1)


if __name__ == "__main__":
    asyncio.run(main())
