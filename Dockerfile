# The user-code image: the mushroom_pipeline package, its Dagster code location and the
# dagster.yaml/workspace.yaml the webserver and daemon share. CPU torch by default;
# `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130` for CUDA.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# EXTRAS=k8s adds dagster-k8s for the Helm deployment (deploy/helm/values.yaml)
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/home \
    MUSHROOM_HOME=/opt/dagster/mushroom

WORKDIR /opt/dagster/app
# torch first, from the chosen index, so the project's pins are already satisfied
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY mushroom_pipeline ./mushroom_pipeline
# editable: the code location loads defs/ through pyproject.toml's [tool.dg] (load_from_defs_folder)
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}" && mkdir -p "$DAGSTER_HOME" "$MUSHROOM_HOME"
COPY dagster.yaml "$DAGSTER_HOME/dagster.yaml"
COPY workspace.yaml ./
COPY deploy ./deploy

# Point MUSHROOM_DATABASE_URL at the deployment's Postgres (with pgvector); the embedded
# server is for single-machine use only.
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "mushroom_pipeline.definitions"]
