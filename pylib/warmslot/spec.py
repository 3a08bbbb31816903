"""What `@app.pipeline(...)` declares: the pipeline's callable and its limits."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

from .policies import check_options

KeySpec = Union[None, str, Callable[[Any], Any]]


@dataclass
class Signature:
    """A webhook signature check (HMAC-SHA256), verified in Rust before the event is admitted."""

    secret: bytes
    scheme: str = "hex"  # "hex", "slack" or "stripe"
    header: str = "x-signature"
    prefix: str = ""
    tolerance: float = 300.0

    def as_config(self) -> dict:
        return {
            "secret": self.secret,
            "scheme": self.scheme,
            "header": self.header,
            "prefix": self.prefix,
            "tolerance": self.tolerance,
        }


def _secret(secret: Union[str, bytes]) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def hmac_signature(secret: Union[str, bytes], header: str = "x-signature", prefix: str = "") -> Signature:
    """``header: <prefix><hex hmac-sha256(secret, body)>``."""
    return Signature(_secret(secret), "hex", header, prefix)


def github_signature(secret: Union[str, bytes]) -> Signature:
    """GitHub: ``X-Hub-Signature-256: sha256=<hex>``."""
    return Signature(_secret(secret), "hex", "x-hub-signature-256", "sha256=")


def slack_signature(secret: Union[str, bytes], tolerance: float = 300.0) -> Signature:
    """Slack: ``X-Slack-Signature: v0=<hex>`` over ``v0:<X-Slack-Request-Timestamp>:<body>``."""
    return Signature(_secret(secret), "slack", tolerance=tolerance)


def stripe_signature(secret: Union[str, bytes], tolerance: float = 300.0) -> Signature:
    """Stripe: ``Stripe-Signature: t=<ts>,v1=<hex>`` over ``<ts>.<body>``."""
    return Signature(_secret(secret), "stripe", tolerance=tolerance)


def _class_call(cls: type) -> Any:
    """The ``__call__`` a class defines itself (not ``object``'s or ``type``'s), or None."""
    for klass in cls.__mro__:
        if klass is not object and "__call__" in vars(klass):
            return vars(klass)["__call__"]
    return None


def _is_async(target: Any) -> bool:
    if inspect.isclass(target):
        return inspect.iscoroutinefunction(_class_call(target))
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(_class_call(type(target)))


def _takes_ctx(target: Any) -> bool:
    """True unless the pipeline's call accepts exactly one positional argument (the event)."""
    call = _class_call(target) if inspect.isclass(target) else target
    try:
        sig = inspect.signature(call)
    except (TypeError, ValueError):
        return True
    params = list(sig.parameters.values())
    if inspect.isclass(target) and params:
        params = params[1:]  # the instance, whatever it is called
    if any(p.kind is p.VAR_POSITIONAL for p in params) or any(p.name == "ctx" for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) != 1


@dataclass
class PipelineSpec:
    name: str
    target: Any
    min_slots: int
    max_slots: int
    key: KeySpec
    timeout: Optional[float]
    setup: Optional[Callable[[], Any]]
    max_body_bytes: int
    queue_size: int
    max_batch: int
    signature: Optional[Signature]
    reply: str = "sync"
    scaling: str = "predictive"
    scaling_options: Optional[Dict[str, Any]] = None
    is_async: bool = field(init=False)
    is_class: bool = field(init=False)
    takes_ctx: bool = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.target):
            raise TypeError(f"pipeline {self.name!r} must be a function or a class, got {self.target!r}")
        self.is_class = inspect.isclass(self.target)
        self.is_async = _is_async(self.target)
        self.takes_ctx = _takes_ctx(self.target)
        if self.is_class and _class_call(self.target) is None:
            raise TypeError(f"pipeline class {self.target.__name__} needs a __call__(self, event, ctx) method")
        if self.key is not None and not isinstance(self.key, str) and not callable(self.key):
            raise TypeError(f"pipeline {self.name!r}: key must be a field name or a callable(event) -> str")
        if self.min_slots < 1 or self.max_slots < self.min_slots:
            raise ValueError(
                f"pipeline {self.name!r}: need 1 <= min_slots <= max_slots (got {self.min_slots}, {self.max_slots})"
            )
        if self.reply not in ("sync", "async"):
            raise ValueError(f"pipeline {self.name!r}: reply must be 'sync' or 'async', got {self.reply!r}")
        if self.scaling_options is not None and not isinstance(self.scaling_options, dict):
            raise TypeError(f"pipeline {self.name!r}: scaling_options must be a dict, got {self.scaling_options!r}")
        self.scaling_options = check_options(self.scaling, self.scaling_options, f"pipeline {self.name!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"pipeline {self.name!r}: timeout must be positive seconds or None")

    @property
    def keyed(self) -> bool:
        return self.key is not None

    def instantiate(self) -> Callable[..., Any]:
        """Per slot: a class pipeline gets its own instance (its ``__init__`` is the pre-warm).
        The result is always called as ``f(event, ctx)``; a pipeline that takes only the event
        is wrapped."""
        target = self.target() if self.is_class else self.target
        if self.takes_ctx:
            return target
        if self.is_async:

            async def call_async(event: Any, ctx: Any) -> Any:
                return await target(event)

            return call_async
        return lambda event, ctx: target(event)

    def as_config(self) -> dict:
        return {
            "name": self.name,
            "key_field": self.key if isinstance(self.key, str) else None,
            "key_callable": callable(self.key),
            "min_slots": self.min_slots,
            "max_slots": self.max_slots,
            "timeout": self.timeout,
            "max_body_bytes": self.max_body_bytes,
            "queue_size": self.queue_size,
            "max_batch": self.max_batch,
            "shared_mailbox": self.is_async,
            "signature": self.signature.as_config() if self.signature else None,
            "reply_async": self.reply == "async",
        }
