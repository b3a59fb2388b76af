"""The operator's own API calls: ``client`` (server-side apply, prune, status) and ``limiter`` (write gate)."""

from lightkube.core.exceptions import ApiError

from kwasi_operator.kube.client import OPTIONAL_KINDS, Kube, WasmInference
from kwasi_operator.kube.limiter import PRIO_CHILD, PRIO_DEPLOYMENT, PRIO_STATUS, Limiter

__all__ = [
    "OPTIONAL_KINDS", "PRIO_CHILD", "PRIO_DEPLOYMENT", "PRIO_STATUS", "ApiError", "Kube", "Limiter", "WasmInference",
]
