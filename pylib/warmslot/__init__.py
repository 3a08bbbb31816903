"""warmslot: Python bot pipelines behind webhooks, on pre-warmed slots, with a Rust ingress."""

from ._core import __version__
from .app import App, Server
from .context import Context
from .spec import (
    Signature,
    github_signature,
    hmac_signature,
    slack_signature,
    stripe_signature,
)

__all__ = [
    "App",
    "Context",
    "Server",
    "Signature",
    "__version__",
    "github_signature",
    "hmac_signature",
    "slack_signature",
    "stripe_signature",
]
