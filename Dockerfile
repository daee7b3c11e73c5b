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
# With PyTorch's CPU build (the extra index; PyPI's own wheel is the multi-GB CUDA one): a job
# with several hosts trains as one torch.distributed process group, and DeepFM models serve.
RUN pip install --no-cache-dir -c constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu '.[distributed]' \
    && fmkit --version
# Compile what a job with SageMaker's defaults runs (recordIO and libsvm readers, Adam at batch
# 1000, scoring) into the image's numba cache, so the first job starts warm. numba keys its
# cache by CPU: on a host with another CPU model the first job compiles once more.
RUN printf '1 0:1 1:1\n0 1:1 2:1\n' > /tmp/warm.libsvm \
    && fmkit convert --index-base 0 --to recordio /tmp/warm.libsvm /tmp/warm.rec \
    && fmkit train --quiet --train /tmp/warm.rec --model-dir /tmp/warm feature_dim=3 \
        num_factors=2 predictor_type=binary_classifier \
    && fmkit predict --model-dir /tmp/warm --data /tmp/warm.libsvm --output /dev/null \
    && rm -rf /tmp/warm /tmp/warm.libsvm /tmp/warm.rec

ENTRYPOINT ["fmkit", "sagemaker"]
