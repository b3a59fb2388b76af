"""What the operator reports for a child the API server refuses (the bodies are the API server's own shapes,
as the kubernetes client raises them)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from kwasi_operator.control.problems import namespace_terminating, rejected
from kwasi_operator.kube import ApiError
from kwasi_operator.spec import Spec

BASE: dict[str, Any] = {"module": {"image": "r/app:1"}}


def api_error(code: int, kind: str, message: str, causes: list[dict[str, str]] | None = None) -> ApiError:
    details: dict[str, Any] = {"name": "a", "kind": kind}
    if causes is not None:
        details["causes"] = causes
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": "Forbidden" if code == 403 else "Invalid", "message": message, "details": details}
    return ApiError.from_exception(ApiException(status=code, reason=body["reason"], body=json.dumps(body)))


def test_hpa_refused_for_min_replicas_zero_names_the_feature_gate() -> None:
    zero = Spec.parse({**BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 3}})
    e = api_error(422, "HorizontalPodAutoscaler", 'HorizontalPodAutoscaler "a" is invalid: spec.minReplicas: '
                  "Invalid value: 0: must be greater than or equal to 1")
    problem = rejected(zero, e)
    assert problem.reason == "ScaleToZeroUnavailable" and "HPAScaleToZero" in problem.message
    assert "must be greater than or equal to 1" in problem.message
    one = Spec.parse({**BASE, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}})
    assert rejected(one, e).reason == "InvalidChild"
    assert rejected(zero, api_error(422, "Deployment", "bad")).reason == "InvalidChild"
    assert rejected(zero, api_error(403, "deployments", "deployments.apps is forbidden")).reason == "Forbidden"


def test_namespace_being_deleted_is_not_a_problem_of_the_spec() -> None:
    terminating = api_error(403, "deployments", 'deployments.apps "a" is forbidden: unable to create new content in '
                            "namespace n because it is being terminated",
                            [{"reason": "NamespaceTerminating", "message": "namespace n is being terminated",
                              "field": "metadata.namespace"}])
    assert namespace_terminating(terminating)
    assert not namespace_terminating(api_error(403, "deployments", "RBAC: forbidden"))
    assert not namespace_terminating(api_error(422, "deployments", "invalid", [{"reason": "FieldValueInvalid"}]))


def test_a_plain_text_refusal_keeps_its_code() -> None:
    e = ApiError.from_exception(ApiException(status=404, reason="Not Found", body="404 page not found\n"))
    assert (e.code, e.kind, e.causes) == (404, None, ()) and "404 page not found" in e.message
