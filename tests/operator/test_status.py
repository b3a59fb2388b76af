"""Status computed from a Deployment and its pods (pure; the e2e tests check it on a real cluster)."""

from __future__ import annotations

from kwasi_operator.status import DeploymentInfo, Desired, PodInfo, Problem, build, same, scheduling_reason

DESIRED = Desired(generation=3, replicas=2, selector="kwasi.dev/wasminference=a",
                  endpoint="a.ns.svc.cluster.local:8080", gpu_resource="nvidia.com/gpu")
MSG = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available"


def dep(ready: int, updated: int = 2, **conds: tuple[str, str, str]) -> DeploymentInfo:
    return DeploymentInfo(generation=5, observed_generation=5, replicas=2, ready_replicas=ready,
                          updated_replicas=updated, available_replicas=ready, conditions=conds)


def conds(status: dict[str, object]) -> dict[str, tuple[object, object]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}  # type: ignore[attr-defined]


def test_ready_when_all_replicas_ready_and_rolled_out() -> None:
    s = build(DESIRED, dep(2), [PodInfo("p", "Running", "n1", None), PodInfo("q", "Running", "n2", None)], None)
    assert s["phase"] == "Ready" and s["readyReplicas"] == 2 and s["observedGeneration"] == 3
    assert s["endpoint"] == "a.ns.svc.cluster.local:8080" and s["selector"] == DESIRED.selector
    assert conds(s) == {"Ready": ("True", "MinimumReplicasReady"), "Progressing": ("False", "RolledOut"),
                        "Degraded": ("False", "AsExpected"), "Scheduled": ("True", "Scheduled")}
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] for c in s["conditions"])


def test_pending_pods_surface_the_schedulers_message() -> None:
    s = build(DESIRED, dep(0), [PodInfo("p", "Pending", None, MSG)], None)
    assert s["phase"] == "Pending"
    sched = next(c for c in s["conditions"] if c["type"] == "Scheduled")
    assert (sched["status"], sched["reason"]) == ("False", "InsufficientGPU") and MSG in sched["message"]
    assert conds(s)["Ready"] == ("False", "InsufficientGPU")
    assert scheduling_reason("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity", None) == \
        "Unschedulable"
    assert scheduling_reason("1 Insufficient nvidia.com/mig-1g.10gb", "nvidia.com/mig-1g.10gb") == "InsufficientGPU"


def test_problem_fails_and_scale_to_zero_stops() -> None:
    s = build(DESIRED, None, [], Problem("ConfigMapNotFound", "module ConfigMap ns/app does not exist"))
    assert s["phase"] == "Failed" and conds(s)["Degraded"] == ("True", "ConfigMapNotFound")
    zero = Desired(**{**DESIRED.__dict__, "replicas": 0})
    assert build(zero, dep(0), [], None)["phase"] == "Stopped"


def test_rollout_and_deadline() -> None:
    assert build(DESIRED, dep(1, updated=1), [], None)["phase"] == "Progressing"
    stuck = dep(1, updated=1, Progressing=("False", "ProgressDeadlineExceeded", "too slow"))
    s = build(DESIRED, stuck, [], None)
    assert s["phase"] == "Degraded" and conds(s)["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_transition_times_kept_while_status_unchanged() -> None:
    first = build(DESIRED, dep(2), [], None)
    old = [{**c, "lastTransitionTime": "2020-01-01T00:00:00Z"} for c in first["conditions"]]
    again = build(DESIRED, dep(2), [], None, old)
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"2020-01-01T00:00:00Z"}
    assert same(first, again)
    changed = build(DESIRED, dep(1, updated=1), [], None, old)
    ready = next(c for c in changed["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] != "2020-01-01T00:00:00Z" and not same(first, changed)
