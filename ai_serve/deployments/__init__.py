"""Ray Serve deployments, one per model role; the ingress (:mod:`ai_serve.ingress`) composes them."""

from .stt import SttDeployment, SttOptions

__all__ = ["SttDeployment", "SttOptions"]
