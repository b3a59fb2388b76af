"""Every API type the operator reads or writes: group, version, plural, and whether another project's CRD
provides it (then children of that kind are rendered only while the CRD is installed).

The one table the renderer (apiVersion), the client (URL paths) and the kopf handlers (watches) share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    crd: bool = False  # from another project's CustomResourceDefinition (may be absent)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        out = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            out += f"/{name}"
        if subresource is not None:
            out += f"/{subresource}"
        return out


WASM_INFERENCE = Kind("WasmInference", "kwasi.dev", "v1alpha1", "wasminferences")
DEPLOYMENT = Kind("Deployment", "apps", "v1", "deployments")
SERVICE = Kind("Service", "", "v1", "services")
POD = Kind("Pod", "", "v1", "pods")
CONFIG_MAP = Kind("ConfigMap", "", "v1", "configmaps")
PERSISTENT_VOLUME_CLAIM = Kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims")
POD_DISRUPTION_BUDGET = Kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets")
HORIZONTAL_POD_AUTOSCALER = Kind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers")
SERVICE_MONITOR = Kind("ServiceMonitor", "monitoring.coreos.com", "v1", "servicemonitors", crd=True)
POD_MONITOR = Kind("PodMonitor", "monitoring.coreos.com", "v1", "podmonitors", crd=True)
SCALED_OBJECT = Kind("ScaledObject", "keda.sh", "v1alpha1", "scaledobjects", crd=True)
INFERENCE_POOL = Kind("InferencePool", "inference.networking.k8s.io", "v1", "inferencepools", crd=True)
# spec.modelServer's: who may reach the model server, and its certificate from cert-manager.
NETWORK_POLICY = Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies")
CERTIFICATE = Kind("Certificate", "cert-manager.io", "v1", "certificates", crd=True)

# What a WasmInference may own, in apply order: what the pods mount, then the Deployment (pods start
# sooner), then the rest.
CHILDREN = (PERSISTENT_VOLUME_CLAIM, DEPLOYMENT, SERVICE, POD_DISRUPTION_BUDGET, HORIZONTAL_POD_AUTOSCALER,
            SCALED_OBJECT, SERVICE_MONITOR, POD_MONITOR, INFERENCE_POOL, NETWORK_POLICY, CERTIFICATE)
BY_KIND = {k.kind: k for k in (*CHILDREN, WASM_INFERENCE, POD, CONFIG_MAP)}
# Children only some specs ask for (so they may have to be removed again): all but Deployment and Service.
OPTIONAL = tuple(k for k in CHILDREN if k not in (DEPLOYMENT, SERVICE))
# spec.modelServer's children (named <name>-model-server): all of them go when the spec drops it.
SERVER_CHILDREN = (DEPLOYMENT, SERVICE, POD_DISRUPTION_BUDGET, HORIZONTAL_POD_AUTOSCALER, NETWORK_POLICY, CERTIFICATE)
# The CRDs whose presence decides what is rendered.
CRD_KINDS = {k.crd_name: k for k in CHILDREN if k.crd}
