# embed_assets: Dagster webserver + daemon over this workspace. CPU by default.
#   docker build -t embed-assets .
#   docker run -p 3000:3000 -v $PWD/my_docs:/app/data/corpus embed-assets
# A team's instance (PostgreSQL, run queue: deploy/dagster.yaml): add -e DAGSTER_PG_HOST=... -e DAGSTER_PG_PORT=5432
#   -e DAGSTER_PG_USERNAME=... -e DAGSTER_PG_PASSWORD=... -e DAGSTER_PG_DB=...; -e EMBED_ASSETS_EXECUTOR=multiprocess
#   runs each step in its own process.
# GPU: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t embed-assets:gpu .
#      and run with --gpus all (onnxruntime-gpu can be added the same way).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    DAGSTER_HOME=/var/lib/embed_assets/dagster \
    EMBED_ASSETS_HOME=/var/lib/embed_assets/artifacts

# A compiler for llama-cpp-python (embedded LLM) and pytrec-eval when no wheel fits.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY embed_assets ./embed_assets
# The versions tested here (llama-cpp-python is built from source: pinned to the tested release);
# k8s: dagster-k8s, for EMBED_ASSETS_EXECUTOR=k8s under Dagster's Helm chart (deploy/helm/values.yaml).
RUN pip install -c requirements/lock.txt ".[llm,k8s]"
COPY workspace.yaml ./
COPY deploy ./deploy
COPY data ./data
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

RUN mkdir -p "$DAGSTER_HOME" "$EMBED_ASSETS_HOME" && touch "$DAGSTER_HOME/dagster.yaml"
EXPOSE 3000
ENTRYPOINT ["docker-entrypoint.sh"]
