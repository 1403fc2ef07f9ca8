"""The live transcription application: ``build_app(args)`` for ``serve run`` and ``serve deploy``.

``serve run ai_serve.app:build_app`` (flat args only on the command line, e.g. ``stt_num_cpus=1``;
nested ones such as ``stt.model_path`` go in a config file) or ``serve deploy ray_config.yaml``;
the args are validated by :class:`AppArgs`. Resources, replica counts, autoscaling and the STT
batching knobs (``user_config``) belong in the config file, which overrides what :func:`build_app` sets.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application
from ray.serve.deployment import Deployment

from .agents.attendant_config import AttendantConfig
from .agents.ivr_host import IvrOptions
from .deployments.diarization import DiarizationDeployment, DiarizationOptions
from .deployments.stt import SttDeployment, SttOptions
from .ingress import IngressOptions, SttIngress

__all__ = ["AppArgs", "build_app"]


class AppArgs(BaseModel):
    """Builder arguments (the ``args`` of the application in ``ray_config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    stt: SttOptions = Field(default_factory=SttOptions)
    ingress: IngressOptions = Field(default_factory=IngressOptions)
    diarization: DiarizationOptions = Field(default_factory=DiarizationOptions)
    diarization_num_cpus: float = Field(0.25, ge=0)  # speaker embeddings: ~0.1 s of CPU per utterance
    stt_num_cpus: float = Field(1.0, ge=0)  # CPU reserved per STT replica
    stt_num_gpus: float = Field(0.0, ge=0)  # fractional on a shared GPU, with stt.device = "cuda"
    stt_replicas: int | None = Field(None, ge=1)  # None: the config file's num_replicas/autoscaling
    # Mode "attendant": greetings, extensions, thresholds (the roles it uses are the smartpbx-roles app's)
    attendant: AttendantConfig = Field(default_factory=AttendantConfig)
    # Mode "ivr": IVR flows by called number, else multi-agent numbers, their tools and audit log (the
    # roles and timeouts are the attendant's); relative paths are resolved where the app is built
    ivr: IvrOptions = Field(default_factory=IvrOptions)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The ingress bound to the STT and diarization deployments; ``args`` as in :class:`AppArgs`.

    With ``ingress.diarize`` false the diarization deployment is not bound (no speaker labels)."""
    config = AppArgs.model_validate(args or {})
    actor_options: dict[str, Any] = {"num_cpus": config.stt_num_cpus}
    if config.stt_num_gpus:
        actor_options["num_gpus"] = config.stt_num_gpus
    # serve.deployment's stubs keep the class type; at run time these are Deployment objects.
    stt_deployment, ingress = cast(Deployment, SttDeployment), cast(Deployment, SttIngress)
    options: dict[str, Any] = {"ray_actor_options": actor_options}
    if config.stt_replicas is not None:
        options["num_replicas"] = config.stt_replicas
    stt = stt_deployment.options(**options).bind(config.stt.model_dump())
    diarization = None
    if config.ingress.diarize:
        diarization = (
            cast(Deployment, DiarizationDeployment)
            .options(ray_actor_options={"num_cpus": config.diarization_num_cpus})
            .bind(config.diarization.model_dump())
        )
    return ingress.bind(
        stt, config.ingress.model_dump(), diarization, config.attendant.model_dump(),
        config.ivr.resolved().model_dump(),
    )  # fmt: skip
