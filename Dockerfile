# syntax=docker/dockerfile:1.6
# PC² Curate image: the API, the workers and the CLI.
#   CPU (default):  docker build -t pc2-curate .
#   CUDA:           docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t pc2-curate:gpu .
# A CUDA base must provide python3.11 (or set PYTHON=python3 if its default is >= 3.10).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: resolve and install every dependency into a virtualenv -------------------------------
FROM ${BASE_IMAGE} AS build
ARG PYTHON=python3
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! command -v ${PYTHON} >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; fi
RUN ${PYTHON} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (a layer that survives code edits); torch from the index matching the base.
COPY pyproject.toml ./
RUN pip install --upgrade pip setuptools wheel \
 && pip install --index-url ${TORCH_INDEX} "torch==2.13.0" \
 && python - <<'PY'
import subprocess, sys, tomllib
deps = [d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith("torch")]
subprocess.check_call([sys.executable, "-m", "pip", "install", *deps])
PY
COPY pc2 ./pc2
COPY migrations ./migrations
COPY alembic.ini README.md* ./
RUN pip install --no-deps .

# ---- runtime: the virtualenv, migrations, a non-root user ------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG PYTHON=python3
RUN if ! command -v ${PYTHON} >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; fi \
 && groupadd --system --gid 10001 pc2 && useradd --system --uid 10001 --gid pc2 --home /app pc2 \
 && mkdir -p /app /data && chown pc2:pc2 /app /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/migrations /app/migrations
COPY --from=build /src/alembic.ini /app/alembic.ini
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PC2_DATA_DIR=/data \
    PC2_HOST=0.0.0.0 \
    PC2_PORT=8000
WORKDIR /app
USER pc2
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["pc2"]
CMD ["serve", "--", "--api-only"]
