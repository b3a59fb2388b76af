"""GPU: kwasi's own GPU-memory gauges, and the DCGM exporter's device metrics where it runs.

DCGM series name the pod using a GPU (`pod`, or `exported_pod` when its monitor does not honour labels) and
the node as `Hostname` (`hostname` since NVIDIA/dcgm-exporter#655): both spellings are queried and shown.
"""

from __future__ import annotations

from kwasi_dashboards.boards import runtime
from kwasi_dashboards.boards.runtime import PODS
from kwasi_dashboards.grafana import Board, Obj, Query, stat, timeseries

UID = "kwasi-gpu"
GPU_LEGEND = "{{Hostname}}{{hostname}} GPU {{gpu}}"


def dcgm(metric: str) -> str:
    """`metric` of the GPUs that the selected pods hold."""
    own = f'{metric}{{namespace=~"$namespace", pod=~"$pod"}}'
    exported = f'{metric}{{exported_namespace=~"$namespace", exported_pod=~"$pod"}}'
    return f"({own} or {exported})"


def dashboard() -> Obj:
    b = Board(UID, "kwasi / GPU", "GPU memory of kwasi-runtime pods, and DCGM device metrics when the DCGM "
              "exporter is scraped.", runtime.variables())
    allocated, reserved = "kwasi_gpu_memory_allocated_bytes", "kwasi_gpu_memory_reserved_bytes"

    b.row("kwasi-runtime")
    b.add(
        stat("GPU memory allocated", "torch.cuda.memory_allocated summed over pods (0 on CPU-only pods).", "bytes",
             [Query(f"sum({PODS.sel(allocated)})")], width=6),
        stat("GPU memory reserved", "torch.cuda.memory_reserved summed over pods: what the caching allocator "
             "holds.", "bytes", [Query(f"sum({PODS.sel(reserved)})")], width=6),
        stat("Pods", "kwasi-runtime pods in the selection.", "short",
             [Query(f"count({PODS.sel(allocated)})")], width=6),
        stat("Largest pod (reserved)", "The most GPU memory one pod's caching allocator holds: what a pod's GPU "
             "must fit.", "bytes", [Query(f"max({PODS.sel(reserved)})")], width=6),
        timeseries("GPU memory by pod", "torch.cuda memory allocated and reserved by each pod's process.", "bytes", [
            Query(f"sum by (pod) ({PODS.sel(allocated)})", "{{pod}} allocated"),
            Query(f"sum by (pod) ({PODS.sel(reserved)})", "{{pod}} reserved")], width=24),
    )

    b.row("DCGM exporter (when installed)")
    b.add(
        timeseries("Framebuffer used and free", "Device memory per GPU (MiB in DCGM).", "mbytes", [
            Query(f"sum by (Hostname, hostname, gpu) ({dcgm('DCGM_FI_DEV_FB_USED')})", f"{GPU_LEGEND} used"),
            Query(f"sum by (Hostname, hostname, gpu) ({dcgm('DCGM_FI_DEV_FB_FREE')})", f"{GPU_LEGEND} free")]),
        timeseries("Graphics engine active", "Share of time the graphics engine was busy (a profiling metric; "
                   "DCGM_FI_DEV_GPU_UTIL is coarser).", "percentunit", [
                       Query(f"avg by (Hostname, hostname, gpu) ({dcgm('DCGM_FI_PROF_GR_ENGINE_ACTIVE')})",
                             GPU_LEGEND)]),
        timeseries("GPU utilisation", "Share of time a kernel ran on the GPU, 0-100.", "percent", [
            Query(f"avg by (Hostname, hostname, gpu) ({dcgm('DCGM_FI_DEV_GPU_UTIL')})", GPU_LEGEND)]),
        timeseries("Power", "Power draw per GPU.", "watt", [
            Query(f"avg by (Hostname, hostname, gpu) ({dcgm('DCGM_FI_DEV_POWER_USAGE')})", GPU_LEGEND)]),
    )
    return b.json()
