# vitsearch: the page by default (vitsearch ui on :8501), the HTTP API with `vitsearch serve` (:8000); any
# vitsearch command with
# `docker compose run --rm app vitsearch ...`. Installs as the README does: torch first, pinned.
FROM python:3.11-slim

# CPU torch by default; a CUDA build with --build-arg TORCH_INDEX_URL= (PyPI's default wheels).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /opt/vitsearch
COPY pyproject.toml README.md ./
COPY search search
COPY indexer indexer
COPY ui ui
COPY cli cli
COPY train train
COPY api api
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} torch==2.13.0 \
    && pip install --no-cache-dir .

ENV VITSEARCH_DATA_DIR=/vitsearch \
    PYTHONUNBUFFERED=1
VOLUME ["/vitsearch"]
EXPOSE 8501 8000
CMD ["vitsearch", "ui", "--host", "0.0.0.0", "--port", "8501"]
