"""The CPU decode step under torch.compile (inductor's C++ backend), compiled on a background thread.

Eager decode spends about half of each token outside the matrix kernels, in ~30 small ops a layer and their
Python dispatch; inductor fuses that elementwise work into C++ kernels around the int4/int8 matrix calls.
Whether that pays depends on the machine: SmolLM2 int4 on 2 shared cores gained 1.56x under load and nothing
when quiet (bench/README.md, issue 14). Compiling takes 1.5-6 minutes there, so it runs beside serving:
decode stays eager until the compiled step is ready, then switches. Opt-in (`compile` in the model's
metadata) because that background compile is a lot of CPU for a short-lived process. One graph covers a lone
stream (batch 1) and one every batch above it (`dynamic=True`); prefill stays eager. Where the fused CPU decode
kernels apply (`fused_decode.py`) they are faster, and `LoadedModel.compile_decode` does not compile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
from torch.fx.experimental import _config as fx_config

from kwasi_runtime.backends.llm.model import KVCache, Transformer

log = logging.getLogger(__name__)

DecodeFn = Callable[..., torch.Tensor]


class CompiledDecode:
    """`model.forward` for decode steps: the compiled one once ready, eager before (or if compiling failed)."""

    def __init__(self, model: Transformer, threads: int) -> None:
        self.model = model
        self.threads = threads
        self.ready = threading.Event()  # set when compiling ended, successfully or not
        self.error: BaseException | None = None
        self._fn: DecodeFn | None = None
        self._thread = threading.Thread(target=self._compile, name="kwasi-llm-compile", daemon=True)
        self._thread.start()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slot: int,
                 kv_len: int | None) -> torch.Tensor:
        fn = self._fn if self._fn is not None else self.model.forward
        return fn(tokens, positions, cache, slot=slot, kv_len=kv_len)

    @property
    def compiled(self) -> bool:
        return self._fn is not None

    def _compile(self) -> None:
        # Inductor writes the OpenMP thread count into the C++ it generates: the forward thread's, not ours.
        torch.set_num_threads(self.threads)
        fn = torch.compile(self.model.forward, dynamic=True, fullgraph=True)
        try:
            # Imported here, not at start-up: it is seconds of imports, and only a compiling process needs it.
            from torch._inductor import config as inductor_config

            # No "duck sizing": sizes that happen to be equal in the warm-up (2 slots, 2 KV heads) must not
            # become guards that every real cache fails.
            # No precompiled headers: a header precompiled by another process into the shared inductor cache
            # can fail to compile here ("'at::vec' has not been declared"), and then the whole step stays eager.
            no_duck = fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]
            no_pch = inductor_config.patch(cpp_cache_precompile_headers=False)
            with torch.inference_mode(), no_duck, no_pch:
                # Sizes 0 and 1 specialise: warm up at batch 1 and 2, with >= 2 slots, positions and kv_len,
                # so the real caches (any slots and length) and every later step reuse these two graphs.
                for batch in (1, 2):
                    cache = KVCache(self.model, max(2, batch), 8)
                    for kv_len in (2, 3):
                        tokens = torch.zeros((batch, 1), dtype=torch.long)
                        positions = torch.full((batch, 1), kv_len - 1, dtype=torch.long)
                        fn(tokens, positions, cache, slot=0, kv_len=kv_len)
        except Exception as exc:  # inductor or the C++ compiler failed: decode stays eager
            self.error = exc
            log.warning("torch.compile of the decode step failed, decoding eager: %s", exc)
        else:
            # A shape the warm-up did not cover runs eager rather than stalling every stream for a recompile.
            self._fn = torch.compiler.set_stance("eager_on_recompile")(fn)
            log.info("compiled decode step ready")
        finally:
            self.ready.set()
