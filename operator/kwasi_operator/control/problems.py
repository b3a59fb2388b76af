"""Why a spec cannot be realised: what it refers to that is missing (preflight), and what the API server's
refusals of a child mean for the user."""

from __future__ import annotations

from collections.abc import Collection

from kwasi_operator import status as st
from kwasi_operator.kube import ApiError, Kube
from kwasi_operator.spec import Spec


async def preflight(kube: Kube, namespace: str, spec: Spec,
                    available: Collection[str]) -> tuple[st.Problem | None, st.ClaimInfo | None]:
    """What the spec refers to and must exist before pods can start; and the user's own cache claim."""
    claim = None
    cache = spec.model_cache
    if cache is not None and cache.claim_name:
        body = await kube.get("PersistentVolumeClaim", cache.claim_name, namespace)
        if body is None:
            return st.Problem("PersistentVolumeClaimNotFound", f"spec.modelCache: PersistentVolumeClaim "
                                                               f"{namespace}/{cache.claim_name} does not exist"), None
        claim = st.ClaimInfo.from_body(body)
    return await _missing(kube, namespace, spec, available), claim


async def _missing(kube: Kube, namespace: str, spec: Spec, available: Collection[str]) -> st.Problem | None:
    auto = spec.autoscaling
    if auto is not None and auto.engine == "KEDA" and "ScaledObject" not in available:
        return st.Problem("KEDANotInstalled", "spec.autoscaling.engine is KEDA, but the cluster has no "
                                              "scaledobjects.keda.sh CRD (install KEDA, or use engine Auto or HPA)")
    cm = spec.module.get("configMap")
    if cm:
        has_key = await kube.configmap_has_key(cm["name"], cm["key"], namespace)
        if has_key is None:
            return st.Problem("ConfigMapNotFound", f"module ConfigMap {namespace}/{cm['name']} does not exist")
        if not has_key:
            return st.Problem("ConfigMapKeyNotFound", f"module ConfigMap {namespace}/{cm['name']} has no key "
                                                      f"{cm['key']!r}")
    if spec.model_server is not None and spec.model_server.issuer and "Certificate" not in available:
        return st.Problem("CertManagerNotInstalled", "spec.modelServer.tls.issuerRef needs cert-manager "
                                                     "(certificates.cert-manager.io); or name a Secret in "
                                                     "spec.modelServer.tls.secretName")
    for model in spec.models:
        claim = model.source.pvc_claim
        if claim and not await kube.exists("PersistentVolumeClaim", claim, namespace):
            return st.Problem("PersistentVolumeClaimNotFound",
                              f"model {model.name!r}: PersistentVolumeClaim {namespace}/{claim} does not exist")
    return None


def namespace_terminating(e: ApiError) -> bool:
    """A 403 from the NamespaceLifecycle admission plugin: the namespace is being deleted."""
    return e.code == 403 and "NamespaceTerminating" in e.causes


def rejected(spec: Spec, e: ApiError) -> st.Problem:
    """The problem to report for a child the API server refused (400/403/422)."""
    message = e.message or str(e)
    if e.code == 403:
        return st.Problem("Forbidden", message)
    if e.kind == "HorizontalPodAutoscaler" and spec.autoscaling is not None and spec.autoscaling.min_replicas == 0:
        return st.Problem("ScaleToZeroUnavailable", "spec.autoscaling.minReplicas 0 needs the HPAScaleToZero "
                              "feature gate on kube-apiserver and kube-controller-manager (or set it to 1); the "
                              f"API server said: {message}")
    return st.Problem("InvalidChild", message)
