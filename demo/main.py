"""`make demo`: the main job on embedded defaults.

Builds a small TorchScript image classifier (fixed seed), writes an input image tensor, and runs our
compiled C guest on it through `kwasi-runtime run`, exactly as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "guests" / "classify_named.wasm"


class TinyConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.softmax(self.head(features), dim=-1)


def main() -> int:
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="kwasi-demo-"))
    model = torch.jit.script(TinyConvNet().eval())
    model.save(str(work / "model.pt"))  # type: ignore[no-untyped-call]
    image = torch.rand(1, 3, 32, 32)
    (work / "image.f32").write_bytes(image.numpy().tobytes())
    cmd = [
        sys.executable, "-m", "kwasi_runtime.cli", "run",
        "--nn-preload", f"demo:PyTorch:AUTO:{work / 'model.pt'}",
        "--dir", f"/data:{work}",
        "--timeout", "60",
        str(GUEST), "demo", "/data/image.f32", "1,3,32,32",
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
