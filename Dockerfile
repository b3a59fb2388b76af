# syntax=docker/dockerfile:1
# Images from one file (make images builds them with podman; docker works the same):
#   docker build --target runtime      -t kwasi-runtime .
#   docker build --target operator     -t kwasi-operator .
#   docker build --target guests-image -t kwasi-guests .    (the .wasm guests only, for image volumes)
# Both Python images run as a non-root user and work with a read-only root filesystem (caches go to
# /tmp, an emptyDir). Dependencies are installed before the code is copied, so a code-only change
# rebuilds only the last small layer (torch stays cached).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin kwasi
WORKDIR /src
COPY constraints.txt ./
# Prints a pyproject's [project] dependencies, one per line (pip has no "dependencies only" mode).
RUN printf '%s\n' 'import sys, tomllib' \
      'print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' >/usr/local/bin/pyproject-deps

# Guests are built with zig from our C sources (deterministic, -O2 -s).
FROM base AS guests
RUN pip install -c constraints.txt ziglang
COPY guests/ guests/
ENV ZIG_GLOBAL_CACHE_DIR=/tmp/zig ZIG_LOCAL_CACHE_DIR=/tmp/zig
RUN mkdir -p /out && for g in classify llm_stream openai_chat; do \
      python -m ziglang cc --target=wasm32-wasi -O2 -s -o /out/$g.wasm guests/$g.c; done && \
    python -m ziglang cc --target=wasm32-wasi -O2 -s -DNAMED -o /out/classify_named.wasm guests/classify.c
# The fused CPU decode kernels, portable (x86-64-v3): the runtime image has no C compiler to build them at start.
COPY runtime/kwasi_runtime/backends/llm/cpu_kernels.py runtime/kwasi_runtime/backends/llm/cpu_kernels.c kernels/
RUN mkdir -p /lib-out && python kernels/cpu_kernels.py /lib-out/libkwasi_cpu.so

# The guests as an OCI image of plain files: a WasmInference mounts it as an image volume.
FROM scratch AS guests-image
COPY --from=guests /out/ /

FROM base AS runtime
COPY runtime/pyproject.toml runtime/
RUN python /usr/local/bin/pyproject-deps runtime/pyproject.toml >/tmp/deps.txt && \
    pip install -c constraints.txt -r /tmp/deps.txt && rm /tmp/deps.txt
COPY --from=guests /out/ /opt/kwasi/guests/
COPY --from=guests /lib-out/libkwasi_cpu.so /opt/kwasi/lib/
COPY runtime/ runtime/
RUN pip install --no-deps ./runtime && rm -rf /src/runtime
# USER: getpass.getuser() (kopf's identity, torch's cache names) must work under any UID a cluster assigns.
ENV KWASI_CACHE_DIR=/tmp/kwasi-cache HOME=/tmp USER=kwasi KWASI_CHAT_GUEST=/opt/kwasi/guests/openai_chat.wasm \
    KWASI_CPU_KERNELS=/opt/kwasi/lib/libkwasi_cpu.so
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["kwasi-runtime"]

FROM base AS operator
COPY operator/pyproject.toml operator/
RUN python /usr/local/bin/pyproject-deps operator/pyproject.toml >/tmp/deps.txt && \
    pip install -c constraints.txt -r /tmp/deps.txt && rm /tmp/deps.txt
COPY operator/ operator/
RUN pip install --no-deps ./operator && rm -rf /src/operator
ENV HOME=/tmp USER=kwasi
USER 10001:10001
ENTRYPOINT ["kwasi-operator"]
