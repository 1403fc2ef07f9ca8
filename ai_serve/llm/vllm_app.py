"""The production LLM: vLLM behind Ray Serve LLM, as an OpenAI-compatible Serve application.

:class:`VllmAppConfig` is our config of one served model (validated here, without vLLM);
:func:`llm_serving_args` turns it into the ``LLMServingArgs`` dict that Ray documents for
``build_openai_app`` (the same shape as the ``args`` of a ``serve deploy`` YAML), and
:func:`build_vllm_app` builds the application. The AI layer then talks to it with the ``openai`` chat
backend (``base_url = http://<serve>/v1``, ``model = model_id``), so continuous batching, paged KV
cache and tensor parallelism are vLLM's business and our code stays the same on CPU and GPU.

Weights come from a local path (a model store mounted into the pod) or a bucket (``s3://``, ``gs://``,
``abfss://``, ``azure://``), never a hub: ``HF_HUB_OFFLINE`` is set in the replicas' runtime env.

This module imports without vLLM; :func:`build_vllm_app` raises :class:`VllmUnavailableError` naming
the install (``pip install "ray[llm]"``, which brings vLLM and needs CUDA) when it is missing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["VllmAppConfig", "VllmUnavailableError", "build_vllm_app", "llm_serving_args", "vllm_available"]

_REMOTE_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")
INSTALL_HINT = 'pip install "ray[llm]==<the installed ray version>" (brings vLLM; needs a CUDA GPU)'


class VllmUnavailableError(ImportError):
    """Ray Serve LLM or vLLM is not installed."""


class VllmAppConfig(BaseModel):
    """One model served by vLLM through Ray Serve LLM."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1)  # the name clients send as "model"
    model_source: str = Field(min_length=1)  # local folder, or s3:// gs:// abfss:// azure:// bucket
    accelerator_type: str | None = None  # e.g. "H100", "L4", "A10G"; None: any GPU
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(8192, ge=256)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    dtype: str = "auto"
    quantization: str | None = None  # "awq", "gptq", "fp8", ...
    enable_auto_tool_choice: bool = False  # with tool_call_parser: OpenAI tool calls from the model
    tool_call_parser: str | None = None  # e.g. "hermes" (Qwen), "llama3_json"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(16, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # any other vLLM engine argument
    env_vars: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> VllmAppConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (e.g. 'hermes')")
        return self

    @property
    def is_remote(self) -> bool:
        return self.model_source.startswith(_REMOTE_PREFIXES)


def llm_serving_args(config: VllmAppConfig) -> dict[str, Any]:
    """``LLMServingArgs`` as a plain dict (``{"llm_configs": [...]}``), ready for ``build_openai_app``."""
    engine: dict[str, Any] = {
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": config.dtype,
    }
    if config.max_model_len is not None:
        engine["max_model_len"] = config.max_model_len
    if config.quantization:
        engine["quantization"] = config.quantization
    if config.enable_auto_tool_choice:
        engine["enable_auto_tool_choice"] = True
        engine["tool_call_parser"] = config.tool_call_parser
    engine.update(config.engine_kwargs)
    source: str | dict[str, str] = (
        {"bucket_uri": config.model_source} if config.is_remote else config.model_source
    )
    llm_config: dict[str, Any] = {
        "model_loading_config": {"model_id": config.model_id, "model_source": source},
        "engine_kwargs": engine,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": config.min_replicas,
                "max_replicas": config.max_replicas,
                "target_ongoing_requests": config.target_ongoing_requests,
            },
            "max_ongoing_requests": config.max_ongoing_requests,
        },
        "runtime_env": {
            "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **config.env_vars},
        },
    }
    if config.accelerator_type:
        llm_config["accelerator_type"] = config.accelerator_type
    return {"llm_configs": [llm_config]}


def vllm_available() -> bool:
    """Whether both vLLM and Ray Serve LLM's dependencies are importable."""
    return importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("pyarrow") is not None


def build_vllm_app(config: VllmAppConfig | dict[str, Any]) -> Any:
    """The Ray Serve application (``serve.run(app)`` or an entry of a Serve config) for ``config``."""
    cfg = config if isinstance(config, VllmAppConfig) else VllmAppConfig.model_validate(config)
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailableError(f"the vLLM app needs vLLM: {INSTALL_HINT}")
    try:
        from ray.serve.llm import build_openai_app
    except ImportError as e:
        raise VllmUnavailableError(f"ray.serve.llm cannot be imported ({e}): {INSTALL_HINT}") from e
    return build_openai_app(llm_serving_args(cfg))
