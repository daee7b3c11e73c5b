# fmkit as a SageMaker training and inference container.
# SageMaker runs `docker run IMAGE train` and `docker run IMAGE serve`; the entrypoint maps
# them to `fmkit sagemaker train|serve` (exec form, so SIGTERM reaches fmkit).
FROM python:3.11-slim

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /opt/fmkit
COPY pyproject.toml constraints.txt README.md ./
COPY fmkit ./fmkit
RUN pip install --no-cache-dir -c constraints.txt . \
    && fmkit --version

ENTRYPOINT ["fmkit", "sagemaker"]
