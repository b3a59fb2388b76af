"""pod_failure: a pod's container statuses, as the kubelet writes them, turned into a reason and the container's
own message."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kwasi_operator.pod_failures import MESSAGE_LIMIT, PodFailure, pod_failure
from kwasi_operator.status import DeploymentInfo, Desired, PodInfo, build

Obj = dict[str, Any]


def pod(init: list[Obj] | None = None, main: list[Obj] | None = None) -> Obj:
    return {"status": {"initContainerStatuses": init or [], "containerStatuses": main or []}}


def waiting(name: str, reason: str, message: str = "") -> Obj:
    return {"name": name, "ready": False, "state": {"waiting": {"reason": reason, "message": message}}}


def crashed(name: str, code: int, message: str, ready: bool = False, restarts: int = 0) -> Obj:
    return {"name": name, "ready": ready, "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}}


def test_image_pull_failure_names_the_image() -> None:
    msg = 'failed to pull and unpack image "localhost/kwasi-runtime:nope": not found'
    assert pod_failure(pod(main=[waiting("runtime", "ErrImagePull", msg)])) == PodFailure(
        "ImagePullFailed", f"container runtime: ErrImagePull: {msg}")
    assert pod_failure(pod(main=[waiting("runtime", "ImagePullBackOff", "Back-off")])) == PodFailure(
        "ImagePullFailed", "container runtime: ImagePullBackOff: Back-off")


def test_a_failed_fetch_init_container_reports_the_last_line_of_its_log() -> None:
    log = "kwasi-runtime: INFO starting\nkwasi-runtime: fetch failed: http://x/m.gguf: sha256 is ab, expected cd\n"
    init = {"name": "fetch-model-0", "ready": False,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": log}}}
    failure = pod_failure(pod(init=[init], main=[waiting("runtime", "PodInitializing")]))
    assert failure == PodFailure("FetchFailed", "container fetch-model-0 exited 1: kwasi-runtime: fetch failed: "
                                                "http://x/m.gguf: sha256 is ab, expected cd")


def test_a_crash_looping_runtime_reports_its_own_message() -> None:
    failure = pod_failure(pod(main=[crashed("runtime", 1, "start-up failed: model file not found: /m", restarts=3)]))
    assert failure == PodFailure("RuntimeFailed", "container runtime exited 1, 3 restarts: "
                                                  "start-up failed: model file not found: /m")


def test_healthy_starting_and_recovered_pods_have_no_failure() -> None:
    assert pod_failure({}) is None
    assert pod_failure(pod(main=[waiting("runtime", "ContainerCreating")])) is None
    assert pod_failure(pod(main=[{"name": "runtime", "ready": True, "state": {"running": {}}}])) is None
    # Restarted once after a crash and Ready again: the old crash is history.
    recovered = crashed("runtime", 137, "OOMKilled", ready=True)
    recovered["state"] = {"running": {}}
    assert pod_failure(pod(main=[recovered])) is None
    done = {"name": "fetch-model-0", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_failure(pod(init=[done], main=[waiting("runtime", "PodInitializing")])) is None


def test_other_init_containers_and_create_errors() -> None:
    copy = {"name": "copy-module", "state": {"terminated": {"exitCode": 1, "message": "cp: no such file"}}}
    assert pod_failure(pod(init=[copy])) == PodFailure("InitContainerFailed",
                                                       "container copy-module exited 1: cp: no such file")
    cfg = waiting("runtime", "CreateContainerConfigError", 'configmap "g" not found')
    assert pod_failure(pod(main=[cfg])) == PodFailure(
        "ContainerCreateFailed", 'container runtime: CreateContainerConfigError: configmap "g" not found')


@given(st.text(), st.integers(min_value=1, max_value=255))
def test_messages_are_bounded_and_single_line(log: str, code: int) -> None:
    failure = pod_failure(pod(main=[crashed("runtime", code, log)]))
    assert failure is not None and failure.reason == "RuntimeFailed"
    assert len(failure.message) <= MESSAGE_LIMIT and "\n" not in failure.message


def test_the_status_quotes_the_failure_until_the_pod_is_ready() -> None:
    desired = Desired(generation=2, replicas=1, selector="kwasi.dev/wasminference=a", endpoint=None, gpu_resource=None)
    deployment = DeploymentInfo(generation=1, observed_generation=1, replicas=1, ready_replicas=0,
                                updated_replicas=1, available_replicas=0, conditions={})
    body = {"metadata": {"name": "a-1"}, "spec": {"nodeName": "n"},
            "status": {"phase": "Pending", "containerStatuses": [crashed("runtime", 1, "start-up failed: boom")]}}
    status = build(desired, deployment, [PodInfo.from_body(body)], None)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Failed"
    assert (ready["status"], ready["reason"]) == ("False", "RuntimeFailed")
    assert ready["message"] == "0/1 replicas ready; pod a-1: container runtime exited 1: start-up failed: boom"
    running = {**body, "status": {"phase": "Running", "containerStatuses": [
        {"name": "runtime", "ready": True, "state": {"running": {}}}]}}
    healthy = build(desired, DeploymentInfo(1, 1, 1, 1, 1, 1, {}), [PodInfo.from_body(running)], None)
    assert healthy["phase"] == "Ready"
