# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target runtime  -t kwasi-runtime .
#   docker build --target operator -t kwasi-operator .
# Both run as a non-root user and work with a read-only root filesystem (caches go to /tmp, an emptyDir).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt ./

# Guests are built with zig from our C sources (deterministic, -O2 -s).
FROM base AS guests
RUN pip install -c constraints.txt ziglang
COPY guests/ guests/
ENV ZIG_GLOBAL_CACHE_DIR=/tmp/zig ZIG_LOCAL_CACHE_DIR=/tmp/zig
RUN mkdir -p /out && for g in classify llm_stream openai_chat; do \
      python -m ziglang cc --target=wasm32-wasi -O2 -s -o /out/$g.wasm guests/$g.c; done && \
    python -m ziglang cc --target=wasm32-wasi -O2 -s -DNAMED -o /out/classify_named.wasm guests/classify.c

FROM base AS runtime
COPY runtime/ runtime/
RUN pip install -c constraints.txt ./runtime && rm -rf /src/runtime && \
    useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin kwasi
COPY --from=guests /out/ /opt/kwasi/guests/
ENV KWASI_CACHE_DIR=/tmp/kwasi-cache HOME=/tmp KWASI_CHAT_GUEST=/opt/kwasi/guests/openai_chat.wasm
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["kwasi-runtime"]

FROM base AS operator
COPY operator/ operator/
RUN pip install -c constraints.txt ./operator && rm -rf /src/operator && \
    useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin kwasi
ENV HOME=/tmp
USER 10001:10001
ENTRYPOINT ["kwasi-operator"]
