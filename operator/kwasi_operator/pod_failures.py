"""Why a WasmInference's pod does not start, in its containers' own words (pure functions over a pod body).

The kubelet reports it per container: a waiting reason with a message (the image cannot be pulled, the
container cannot be created), or a terminated state with the exit code and the container's message. The
rendered containers use `terminationMessagePolicy: FallbackToLogsOnError`, so a container that wrote no
termination message is described by the tail of its log: the runtime's and `kwasi-runtime fetch`'s last
line is the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Waiting reasons of the kubelet (k8s.io/kubernetes pkg/kubelet/images and kuberuntime) and what we call them.
WAITING_REASONS = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "ErrImageNeverPull": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerCreateFailed",
    "CreateContainerError": "ContainerCreateFailed",
    "RunContainerError": "ContainerCreateFailed",
}
FETCH_PREFIX = "fetch-"  # init containers that download a module or model (render: the fetch init container)
MESSAGE_LIMIT = 400


@dataclass(frozen=True)
class PodFailure:
    reason: str  # ImagePullFailed, ContainerCreateFailed, FetchFailed, InitContainerFailed or RuntimeFailed
    message: str


def pod_failure(body: Mapping[str, Any]) -> PodFailure | None:
    """The first container failure of the pod, init containers first (they run first); None if there is none."""
    status = body.get("status") or {}
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for cs in status.get(key) or ():
            failure = container_failure(cs, init)
            if failure is not None:
                return failure
    return None


def container_failure(cs: Mapping[str, Any], init: bool) -> PodFailure | None:
    name = cs.get("name", "?")
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in WAITING_REASONS:
        message = f"container {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        return PodFailure(WAITING_REASONS[waiting["reason"]], _short(message))
    # A crash: terminated now (an init container that failed), or before its restart (CrashLoopBackOff).
    terminated = state.get("terminated") or ({} if cs.get("ready") else (cs.get("lastState") or {}).get("terminated"))
    if not terminated or terminated.get("exitCode", 0) == 0:
        return None
    reason = "RuntimeFailed"
    if init:
        reason = "FetchFailed" if name.startswith(FETCH_PREFIX) else "InitContainerFailed"
    said = _last_line(terminated.get("message") or "") or terminated.get("reason") or "no message"
    restarts = f", {cs['restartCount']} restarts" if cs.get("restartCount") else ""
    return PodFailure(reason, _short(f"container {name} exited {terminated['exitCode']}{restarts}: {said}"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"
