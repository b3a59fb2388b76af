"""Continuous batching: every stream of one loaded model (and context size) decodes in one shared forward.

A `SlotScheduler` owns a static KV cache with `n_slots` rows and one batch thread. A stream takes a row
(`acquire`) for the length of a generation and gives it back (`release`). `prefill` and `decode` are blocking
calls made from the stream's own thread (each guest runs on its own thread; wasm and torch release the GIL):
they queue a request and wait while the batch thread runs, per iteration,

1. one decode forward for every stream waiting with its next token, `[B, 1]` tokens at their own positions;
2. prefill chunks (`batch-size` tokens each, the same boundaries as a solo run) of newly started streams, up to
   one chunk budget, so a long prompt never stalls the running streams for more than one chunk.

Occupied rows are kept dense at `0 .. n-1`: a released row is filled by moving the highest occupied row into
it (a copy of its filled prefix, once per stream end). A decode batch is then always one contiguous `narrow`
of the cache (no gather), which is also the shape that per-batch-size CUDA graphs want. Rows inside the batch
span whose stream is not waiting (it is busy in guest code) ride along as "ghost" rows: they write at their
own next position, which that stream overwrites before it ever reads it, and their logits are dropped.

Sampling stays with each stream (its own generator and history): the batch thread only hands back logits rows.

Forwards themselves (lone or batched, every scheduler of the process) run on the one forward thread
(`forward_thread.py`), so that only one thread ever starts OpenMP teams.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from kwasi_runtime.backends.llm.cuda_graphs import DecodeGraph, graph_batch, graph_span, graphs_supported
from kwasi_runtime.backends.llm.forward_thread import one_intra_op_thread, run_forward
from kwasi_runtime.backends.llm.model import KVCache, Transformer
from kwasi_runtime.nn import interrupt
from kwasi_runtime.nn.abi import Errno, NNError

DEFAULT_SLOTS = 4  # kwasi-runtime serve's default --max-concurrency; serve passes its own value
# How long the batch thread waits for streams still in guest code before a decode step without them: a fraction of
# the last forward (a stream that misses a step waits a whole step), capped so an idle-but-started stream
# (a guest that stopped stepping) costs the others little.
GATHER_FRACTION = 0.25
GATHER_MAX_S = 0.02
IDLE_EXIT_S = 2.0  # the batch thread ends after this long without work; the next request starts a new one


@dataclass(eq=False)
class Slot:
    """One stream's KV row. `index` is moved by compaction; only the batch thread reads it while a forward runs."""

    index: int
    filled: int = 0  # leading positions holding this stream's keys/values
    prefilling: bool = False
    released: bool = False


@dataclass(eq=False)
class _Request:
    slot: Slot
    kind: Literal["prefill", "decode"]
    ids: Sequence[int] = ()  # prefill: the tokens; decode: one token
    batch_size: int = 512
    use_graph: bool = False
    done_upto: int = 0  # prefill progress
    result: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Stats:
    last_step_s: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0  # rows that carried a real request (ghosts excluded)
    max_batch: int = 0
    prefill_chunks: int = 0
    prefill_batches: int = 0  # forwards that prefilled several streams' chunks at once
    # batch sizes of recent decode steps (tests, debugging)
    history: deque[int] = field(default_factory=lambda: deque(maxlen=256))


class SlotScheduler:
    """Fixed KV slots for up to `n_slots` concurrent streams of one model at one context length."""

    def __init__(self, model: Transformer, n_slots: int, length: int) -> None:
        self.model = model
        self.n_slots = max(1, n_slots)
        self.length = length
        self.stats = _Stats()
        self._cond = threading.Condition()
        self._rows: list[Slot | None] = [None] * self.n_slots
        self._pending: list[_Request] = []
        self._cache: KVCache | None = None
        self._finite = [0] * self.n_slots  # per row: leading positions known to hold finite values
        self._graphs: dict[tuple[int, int], DecodeGraph] = {}  # CUDA: captured steps per (batch, span) bucket
        self.decode_fn: Callable[..., torch.Tensor] = model.forward  # the compiled step, once the model has one
        self._batch_thread: threading.Thread | None = None
        self._forward_running = False

    # -- stream side --------------------------------------------------------------------------------------
    def in_use(self) -> int:
        with self._cond:
            return sum(1 for r in self._rows if r is not None)

    def usage(self) -> float:
        return self.in_use() / self.n_slots

    def tokens_held(self) -> int:
        """Positions of the cache holding a live stream's keys and values."""
        with self._cond:
            return sum(r.filled for r in self._rows if r is not None)

    def acquire(self) -> Slot:
        """A free row, or BUSY: queueing here could deadlock a guest holding one context while opening another;
        the server queues whole requests instead (its --max-concurrency sizes the slots)."""
        with self._cond:
            for i, row in enumerate(self._rows):
                if row is None:
                    slot = Slot(i)
                    self._rows[i] = slot
                    return slot
        raise NNError(Errno.BUSY, f"all {self.n_slots} KV slots of this model are in use "
                                  f"(serve sizes them from --max-concurrency)")

    def release(self, slot: Slot) -> None:
        """Frees the row at once (idempotent); any request still queued for it fails."""
        with self._cond:
            if slot.released:
                return
            slot.released = True
            for req in [r for r in self._pending if r.slot is slot]:
                self._finish(req, error=NNError(Errno.RUNTIME_ERROR, "KV slot released"))
            if 0 <= slot.index < self.n_slots and self._rows[slot.index] is slot:
                self._rows[slot.index] = None
            if not self._forward_running:
                self._compact()
            self._cond.notify_all()

    def prefill(self, slot: Slot, ids: Sequence[int], batch_size: int) -> torch.Tensor:
        """Evaluates `ids` from position 0 in `slot`; logits `[vocab]` of the last token."""
        slot.prefilling = True
        try:
            return self._submit(_Request(slot, "prefill", list(ids), max(1, batch_size)))
        finally:
            slot.prefilling = False

    def decode(self, slot: Slot, token: int, use_graph: bool = True) -> torch.Tensor:
        """Feeds `token` at the slot's next position; logits `[vocab]` for the position after it."""
        return self._submit(_Request(slot, "decode", (token,), use_graph=use_graph))

    def _submit(self, req: _Request) -> torch.Tensor:
        with self._cond:
            if req.slot.released:
                raise NNError(Errno.RUNTIME_ERROR, "KV slot released")
            # A lone stream hands its forwards to the forward thread itself: there is nothing to batch with, so
            # the batch thread (and its gather window) would only add a hop.
            def only_me() -> bool:
                return all(r is None or r is req.slot for r in self._rows)

            alone = False
            if only_me():
                # The batch thread may still be closing the iteration that answered this stream's last request.
                self._cond.wait_for(lambda: not self._forward_running)
                alone = only_me() and not self._pending
            if alone:
                self._forward_running = True
        if alone:
            try:
                if req.kind == "decode":
                    run_forward(lambda: self._iteration([req], []))
                else:
                    # Whole chunks: the same boundaries as when batched. A stream that arrives meanwhile queues
                    # (self._pending): the rest of this prefill goes to the batch thread, interleaved with it.
                    while not req.done and not self._pending:
                        interrupt.check()  # a long prompt stops between chunks when its guest is stopped
                        run_forward(lambda: self._iteration([], [req]))
            finally:
                with self._cond:
                    self._forward_running = False
                    self._compact()
                    self._cond.notify_all()
            if req.done:
                if req.error is not None:
                    raise req.error
                assert req.result is not None
                return req.result
        with self._cond:
            self._pending.append(req)
            if self._batch_thread is None:
                self._batch_thread = threading.Thread(target=self._run, name="kwasi-llm-batch", daemon=True)
                self._batch_thread.start()
            self._cond.notify_all()
            while not req.done:
                self._cond.wait(interrupt.POLL_S)
                stop = interrupt.stop_reason()
                if stop is not None:  # the guest was cancelled or ran out of time while waiting its turn
                    self._finish(req, error=stop)
            error, result = req.error, req.result
        if error is not None:
            raise error
        assert result is not None
        return result

    def _finish(self, req: _Request, result: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        if req.done:
            return  # abandoned by its stream (cancel, deadline) while the batch thread was computing it
        req.result, req.error, req.done = result, error, True
        if req in self._pending:
            self._pending.remove(req)
        self._cond.notify_all()  # now, not at the end of the iteration: a finished prefill streams at once

    # -- batch thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                # A caller may be running a lone step itself; requests arriving meanwhile wait for it.
                if not self._cond.wait_for(lambda: bool(self._pending) and not self._forward_running, IDLE_EXIT_S):
                    if self._pending:
                        continue  # a lone forward is still running; what queued behind it is this thread's
                    self._batch_thread = None  # a later _submit (which holds the lock) starts a new thread
                    return
                self._gather()
                self._compact()
                decodes = sorted((r for r in self._pending if r.kind == "decode"), key=lambda r: r.slot.index)
                prefills = [r for r in self._pending if r.kind == "prefill"]
                self._forward_running = True
            try:
                run_forward(lambda: self._iteration(decodes, prefills))  # noqa: B023 (run before the next loop)
            finally:
                with self._cond:
                    self._forward_running = False
                    self._compact()  # releases that came in during the forward
                    self._cond.notify_all()

    def _gather(self) -> None:
        """Waits (lock held, briefly) for started streams that are still in guest code to join this step."""
        window = min(GATHER_MAX_S, GATHER_FRACTION * self.stats.last_step_s)
        deadline = time.monotonic() + window

        def everyone_waits() -> bool:
            decoding = sum(1 for r in self._rows if r is not None and r.filled > 0 and not r.prefilling)
            waiting = sum(1 for r in self._pending if r.kind == "decode")
            return waiting >= decoding

        while not everyone_waits():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _iteration(self, decodes: list[_Request], prefills: list[_Request]) -> None:
        started = time.monotonic()
        if decodes:
            self._safely(decodes, lambda: self._decode_step(decodes))
        if prefills:
            # Whole chunks only (the same boundaries as each stream's solo run): the next chunk of as many new
            # streams as one chunk budget holds, at least one, in one padded forward.
            budget, spent, batch = prefills[0].batch_size, 0, list[_Request]()
            for req in prefills:
                n = min(req.batch_size, len(req.ids) - req.done_upto)
                if batch and spent + n > budget:
                    break
                batch.append(req)
                spent += n
            self._safely(batch, lambda: self._prefill_chunks(batch))
        self.stats.last_step_s = time.monotonic() - started

    def _safely(self, reqs: list[_Request], step: Callable[[], int]) -> int:
        """Runs one forward; on failure its requests get the error (the batch thread lives on)."""
        try:
            return step()
        except Exception as exc:
            error = exc if isinstance(exc, NNError) else NNError(Errno.RUNTIME_ERROR, f"LLM step failed: {exc}")
            with self._cond:
                for r in reqs:
                    if not r.done:
                        self._finish(r, error=error)
            return 1

    def _ensure_cache(self) -> KVCache:
        if self._cache is None:
            cuda = self.model.device.type == "cuda"
            # On CPU the rows are left unzeroed (pages are committed only as positions are used); positions a
            # batched read could see are zeroed on demand in `_make_finite`. CUDA zeroes once (graphs read all).
            self._cache = KVCache(self.model, self.n_slots, self.length, zeroed=cuda)
            if cuda:
                self._finite = [self.length] * self.n_slots
        return self._cache

    @torch.inference_mode()
    def _make_finite(self, rows: Sequence[int], written: Sequence[int], upto: int) -> None:
        """Masked positions still enter SDPA's matmul (0 * NaN = NaN): every row of a batch read up to `upto`
        must be finite there. Row rows[i] holds keys below written[i] once this forward has run; only what lies
        above that and has never been written or zeroed needs zeroing."""
        cache = self._ensure_cache()
        for row, below in zip(rows, written, strict=True):
            have = max(self._finite[row], below)
            if have < upto:
                for layer in range(len(cache.keys)):
                    cache.keys[layer][row, :, have:upto].zero_()
                    cache.values[layer][row, :, have:upto].zero_()
            self._finite[row] = max(have, upto)

    @torch.inference_mode()
    def _prefill_chunk(self, req: _Request) -> int:
        cache = self._ensure_cache()
        slot, start = req.slot, req.done_upto
        chunk = list(req.ids[start:start + req.batch_size])
        device = self.model.device
        tokens = torch.tensor([chunk], device=device)
        positions = torch.arange(start, start + len(chunk), device=device).unsqueeze(0)
        end = start + len(chunk)
        self._finite[slot.index] = max(self._finite[slot.index], end)  # this forward writes start..end-1
        logits = self.model(tokens, positions, cache, slot=slot.index, kv_len=end, last_only=True)[0, -1]
        self.stats.prefill_chunks += 1
        with self._cond:
            req.done_upto = slot.filled = end
            if end >= len(req.ids):
                self._finish(req, result=logits)
        return len(chunk)

    @torch.inference_mode()
    def _prefill_chunks(self, reqs: list[_Request]) -> int:
        """The next chunk of each request in one forward: rows padded to the longest chunk (pads sit at the
        positions after a stream's chunk, where it writes before it reads, like a ghost row's keys)."""
        if len(reqs) == 1:
            return self._prefill_chunk(reqs[0])
        cache = self._ensure_cache()
        device = self.model.device
        starts = [r.done_upto for r in reqs]
        chunks = [list(r.ids[r.done_upto:r.done_upto + r.batch_size]) for r in reqs]
        width = max(len(c) for c in chunks)
        rows = [r.slot.index for r in reqs]
        tokens = torch.tensor([c + [0] * (width - len(c)) for c in chunks], device=device)
        positions = torch.tensor([[min(s + j, self.length - 1) for j in range(width)] for s in starts],
                                 device=device)
        ends = [s + len(c) for s, c in zip(starts, chunks, strict=True)]
        kv_len = max(ends)
        self._make_finite(rows, [min(s + width, self.length) for s in starts], kv_len)
        hidden = self.model.hidden_states(tokens, positions, cache, slot=torch.tensor(rows, device=device),
                                          kv_len=kv_len)
        last = hidden[torch.arange(len(reqs), device=device), torch.tensor([len(c) - 1 for c in chunks],
                                                                            device=device)]
        logits = self.model.output(last)  # [B, vocab]: only each stream's last position
        self.stats.prefill_chunks += len(reqs)
        self.stats.prefill_batches += 1
        with self._cond:
            for i, (req, end) in enumerate(zip(reqs, ends, strict=True)):
                req.done_upto = req.slot.filled = end
                if end >= len(req.ids):
                    self._finish(req, result=logits[i])
        return sum(len(c) for c in chunks)

    @torch.inference_mode()
    def _decode_step(self, reqs: list[_Request]) -> int:
        cache = self._ensure_cache()
        lo, hi = reqs[0].slot.index, reqs[-1].slot.index + 1
        graphs = reqs[0].use_graph and graphs_supported(self.model.device)
        if graphs:
            lo, hi = 0, graph_batch(hi, self.n_slots)  # a captured bucket: rows 0 .. bucket-1
        elif self.decode_fn is not self.model.forward:
            lo = 0  # the compiled step was traced at slot 0: rows below the batch ride along as ghosts
        by_row = {r.slot.index: r for r in reqs}
        token_list: list[int] = []
        pos_list: list[int] = []
        for row in range(lo, hi):
            req = by_row.get(row)
            if req is not None:
                token_list.append(req.ids[0])
                pos_list.append(req.slot.filled)
                continue
            occupant = self._rows[row]
            # A ghost writes at the occupant's next position, which it overwrites before reading; a free row
            # (a graph bucket's padding) at position 0, which its next stream's prefill overwrites.
            ghost_pos = min(occupant.filled, self.length - 1) if occupant is not None else 0
            token_list.append(0)
            pos_list.append(ghost_pos)
        if max(pos_list) >= self.length:
            raise NNError(Errno.CONTEXT_FULL, f"context of {self.length} tokens is full")
        kv_len = max(pos_list) + 1
        if graphs:
            key = (hi, graph_span(kv_len, self.length))
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = DecodeGraph(self.model, cache, *key)
            # The graph's output buffer is reused by the next replay; the streams sample from their own copy.
            rows = graph.run(token_list, pos_list).clone()
        else:
            self._make_finite(range(lo, hi), [p + 1 for p in pos_list], kv_len)
            device = self.model.device
            tokens = torch.tensor(token_list, device=device).unsqueeze(1)
            positions = torch.tensor(pos_list, device=device).unsqueeze(1)
            rows = self.decode_fn(tokens, positions, cache, slot=lo, kv_len=kv_len)[:, -1]
        s = self.stats
        s.decode_steps += 1
        s.decode_rows += len(reqs)
        s.max_batch = max(s.max_batch, len(reqs))
        s.history.append(len(reqs))
        with self._cond:
            for req in reqs:
                req.slot.filled += 1
                self._finish(req, result=rows[req.slot.index - lo])
        return len(reqs)

    @torch.inference_mode()  # the cache was made under inference mode; in-place writes must be too
    def _compact(self) -> None:
        """Moves the highest occupied rows into holes below them (lock held, no forward running)."""
        with one_intra_op_thread():  # on a stream's or the batch thread: copies start no OpenMP team there
            self._compact_rows()

    def _compact_rows(self) -> None:
        rows = self._rows
        while True:
            hole = next((i for i, r in enumerate(rows) if r is None), None)
            top = next((i for i in range(len(rows) - 1, -1, -1) if rows[i] is not None), None)
            if hole is None or top is None or top < hole:
                return
            slot = rows[top]
            assert slot is not None
            if slot.filled and self._cache is not None:
                n = slot.filled
                for layer in range(len(self._cache.keys)):
                    self._cache.keys[layer][hole, :, :n] = self._cache.keys[layer][top, :, :n]
                    self._cache.values[layer][hole, :, :n] = self._cache.values[layer][top, :, :n]
                self._finite[hole] = max(self._finite[hole], n)
            rows[hole], rows[top] = slot, None
            slot.index = hole
