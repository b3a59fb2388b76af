"""`kwasi-runtime serve`: HTTP front (WAGI guests, OpenAI-compatible API) with Prometheus streaming metrics."""
