"""The operator's own API calls: ``client`` (server-side apply, prune, status), ``errors`` (what a refusal
said) and ``limiter`` (the write gate)."""

from kwasi_operator.kube.client import Kube
from kwasi_operator.kube.errors import ApiError
from kwasi_operator.kube.limiter import PRIO_CHILD, PRIO_DEPLOYMENT, PRIO_STATUS, Limiter

__all__ = ["PRIO_CHILD", "PRIO_DEPLOYMENT", "PRIO_STATUS", "ApiError", "Kube", "Limiter"]
