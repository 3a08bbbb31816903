"""warmslot: Python bot pipelines behind webhooks, on pre-warmed slots, with a Rust ingress."""

from ._core import __version__
from .app import App, Server, StartupError
from .context import Context
from .spec import (
    Signature,
    github_signature,
    hmac_signature,
    slack_signature,
    standard_webhooks_signature,
    stripe_signature,
)

__all__ = [
    "App",
    "Context",
    "Server",
    "Signature",
    "StartupError",
    "__version__",
    "github_signature",
    "hmac_signature",
    "slack_signature",
    "standard_webhooks_signature",
    "stripe_signature",
]
