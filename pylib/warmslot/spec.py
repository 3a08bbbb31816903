"""What `@app.pipeline(...)` declares: the pipeline's callable and its limits."""

from __future__ import annotations

import base64
import binascii
import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from . import _core, _json
from .policies import check_options as check_scaling_options

KeySpec = Union[None, str, Callable[[Any], Any]]

#: Characters a pipeline name may not contain: it is one segment of ``/hooks/<name>``.
_NAME_FORBIDDEN = set("/?#%\\") | {chr(c) for c in range(33)} | {"\x7f"}


@dataclass
class Signature:
    """A webhook signature check (HMAC-SHA256), verified in Rust before the event is admitted."""

    secret: bytes
    scheme: str = "hex"  # "hex", "slack", "stripe" or "standard"
    header: str = "x-signature"
    prefix: str = ""
    tolerance: float = 300.0

    def settings(self) -> _core.SignatureSettings:
        """This check as the engine takes it (every field named once, here)."""
        return _core.SignatureSettings(
            secret=self.secret, scheme=self.scheme, header=self.header, prefix=self.prefix, tolerance=self.tolerance
        )


def _secret(secret: Union[str, bytes]) -> bytes:
    if not isinstance(secret, (str, bytes, bytearray)):
        raise TypeError(f"secret must be a str or bytes, got {type(secret).__name__}")
    if not secret:
        raise ValueError("secret must not be empty (an empty HMAC key accepts forged signatures)")
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number of seconds, got {tolerance!r}")
    return float(tolerance)


def _header_name(value: str, arg: str) -> str:
    if not isinstance(value, str) or not value or any(c in _NAME_FORBIDDEN or c == ":" for c in value):
        raise ValueError(f"{arg} must be an HTTP header name such as 'x-signature', got {value!r}")
    return value


def hmac_signature(secret: Union[str, bytes], header: str = "x-signature", prefix: str = "") -> Signature:
    """``header: <prefix><hex hmac-sha256(secret, body)>``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    return Signature(_secret(secret), "hex", _header_name(header, "header"), prefix)


def github_signature(secret: Union[str, bytes]) -> Signature:
    """GitHub: ``X-Hub-Signature-256: sha256=<hex>``."""
    return Signature(_secret(secret), "hex", "x-hub-signature-256", "sha256=")


def slack_signature(secret: Union[str, bytes], tolerance: float = 300.0) -> Signature:
    """Slack: ``X-Slack-Signature: v0=<hex>`` over ``v0:<X-Slack-Request-Timestamp>:<body>``."""
    return Signature(_secret(secret), "slack", tolerance=_tolerance(tolerance))


def stripe_signature(secret: Union[str, bytes], tolerance: float = 300.0) -> Signature:
    """Stripe: ``Stripe-Signature: t=<ts>,v1=<hex>`` over ``<ts>.<body>``."""
    return Signature(_secret(secret), "stripe", tolerance=_tolerance(tolerance))


def standard_webhooks_signature(secret: Union[str, bytes], tolerance: float = 300.0) -> Signature:
    """Standard Webhooks (standardwebhooks.com; Svix, Resend, Clerk and others): headers
    ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64> [v1,<base64> ...]``,
    the HMAC-SHA256 of ``<id>.<timestamp>.<body>``; timestamps more than ``tolerance`` seconds
    away from now are refused.

    ``secret``: the ``whsec_<base64>`` string the provider shows (the prefix is optional; the rest
    is base64), or the raw key as ``bytes``.
    """
    if isinstance(secret, str):
        if not secret:
            raise ValueError("secret must not be empty (an empty HMAC key accepts forged signatures)")
        encoded = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("secret must be 'whsec_' followed by base64 (as the provider shows it), or raw bytes")
        return Signature(_secret(key), "standard", tolerance=_tolerance(tolerance))
    return Signature(_secret(secret), "standard", tolerance=_tolerance(tolerance))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(arg: str, value: Any, minimum: int = 1) -> int:
    """An integer option of at least `minimum`, or a TypeError/ValueError naming `arg`."""
    if not _is_int(value):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{arg} must be at least {minimum}, got {value}")
    return value


def check_seconds(arg: str, value: Any, allow_none: bool = False) -> float:
    """A positive number of seconds, or a TypeError/ValueError naming `arg` (`allow_none` only
    changes the message: callers skip the check for None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        none = " or None" if allow_none else ""
        raise TypeError(f"{arg} must be a number of seconds{none}, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{arg} must be positive, got {value!r}")
    return seconds


def check_name(name: Any) -> str:
    """A pipeline name: one path segment of ``/hooks/<name>``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN})
    if not name or bad:
        raise ValueError(
            f"name must be a non-empty path segment without '/', '?', '#', '%', '\\', spaces or control "
            f"characters (it becomes /hooks/<name>), got {name!r}"
        )
    return name


def check_options(
    *,
    slots: Any,
    min_slots: Any,
    max_slots: Any,
    key: Any,
    timeout: Any,
    setup: Any,
    max_body_bytes: Any,
    queue_size: Any,
    max_batch: Any,
    signature: Any,
    reply: Any,
    missing_key: Any,
) -> None:
    """Checks the options of ``@app.pipeline(...)`` where they are declared; every error names
    the argument."""
    for arg, value in (("slots", slots), ("min_slots", min_slots), ("max_slots", max_slots)):
        if value is not None:
            check_count(arg, value)
    if slots is not None and (min_slots is not None or max_slots is not None):
        raise ValueError("give slots=, or min_slots=/max_slots=, not both")
    if min_slots is not None and max_slots is not None and max_slots < min_slots:
        raise ValueError(f"max_slots ({max_slots}) must be at least min_slots ({min_slots})")
    if key is not None and not callable(key):
        if not isinstance(key, str):
            raise TypeError(f"key must be a field name (str) or a callable(event) -> str, got {type(key).__name__}")
        if not key:
            raise ValueError("key must be a non-empty field name")
    if timeout is not None:
        check_seconds("timeout", timeout, allow_none=True)
    if setup is not None and not callable(setup):
        raise TypeError(f"setup must be a callable run once per slot, got {type(setup).__name__}")
    if max_body_bytes is not None:
        check_count("max_body_bytes", max_body_bytes)
    check_count("queue_size", queue_size)
    check_count("max_batch", max_batch)
    if signature is not None and not isinstance(signature, Signature):
        raise TypeError(
            "signature must be a warmslot signature check such as warmslot.github_signature('secret'), "
            f"got {type(signature).__name__} {signature!r:.40}"
        )
    if reply not in ("sync", "async"):
        raise ValueError(f"reply must be 'sync' or 'async', got {reply!r}")
    if missing_key not in ("unkeyed", "reject"):
        raise ValueError(f"missing_key must be 'unkeyed' or 'reject', got {missing_key!r}")
    if missing_key == "reject" and key is None:
        raise ValueError("missing_key='reject' needs key= (without a key every event is unkeyed)")


def _provider_reads_type(signature: Optional[Signature]) -> bool:
    """Whether the signature's provider says where its event type is (GitHub, Slack, Stripe,
    Standard Webhooks), so ``events=`` needs no ``events_from=``."""
    if signature is None:
        return False
    return signature.scheme != "hex" or signature.header.lower() == "x-hub-signature-256"


def check_events(events: Any, events_from: Any, signature: Optional[Signature]) -> Optional[List[str]]:
    """Checks ``events=`` (a non-empty list or tuple of event type strings, or None) and
    ``events_from=`` (``"header:<name>"`` or ``"field:<dotted.path>"``, or None) at declaration;
    returns the types as a list."""
    if events_from is not None:
        if not isinstance(events_from, str):
            raise TypeError(
                f"events_from must be a str such as 'header:X-Event-Type' or 'field:type', got {events_from!r}"
            )
        kind, _, rest = events_from.partition(":")
        rest = rest.strip()
        parts = rest.split(".")
        ok_header = kind == "header" and rest and all(c.isascii() and c.isprintable() and c not in " :" for c in rest)
        ok_field = kind == "field" and rest and all(parts)
        if not (ok_header or ok_field):
            raise ValueError(
                f"events_from must be 'header:<name>' or 'field:<path>' (e.g. 'header:X-Event-Type', "
                f"'field:event.type'), got {events_from!r}"
            )
    if events is None:
        if events_from is not None:
            raise ValueError("events_from needs events= (the event types that run)")
        return None
    if isinstance(events, str) or not isinstance(events, (list, tuple)):
        raise TypeError(f"events must be a list or tuple of event type strings such as ['push'], got {events!r}")
    if not events:
        raise ValueError("events must name at least one event type (leave it out to run every event)")
    for t in events:
        if not isinstance(t, str) or not t.strip():
            raise TypeError(f"events must hold non-empty event type strings, got {t!r} in {events!r}")
        if t != t.strip():  # a type read from a header is trimmed: " push" would never match
            raise ValueError(f"events: {t!r} has spaces around it (in {events!r})")
    if events_from is None and not _provider_reads_type(signature):
        raise ValueError(
            "events= needs events_from= ('header:<name>' or 'field:<path>'): only a GitHub, Slack, Stripe "
            "or Standard Webhooks signature says where the event type is"
        )
    return list(events)


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
    #: "thread" | "process"; None takes the App's default.
    isolation: Optional[str] = None
    concurrency: int = 1
    max_executions: Optional[int] = None
    max_memory_mb: Optional[int] = None
    missing_key: str = "unkeyed"
    scaling: str = "predictive"
    scaling_options: Optional[Dict[str, Any]] = None
    #: True (delivery-id headers), False, a body field name, or a callable(event) -> str.
    dedupe: Any = True
    dedupe_window: float = 86400.0
    retries: int = 0
    retry_backoff: float = 1.0
    #: Event types that run (None: every event), and where the type is found (None: the
    #: signature's provider); see `check_events`.
    events: Optional[List[str]] = None
    events_from: Optional[str] = None
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
        if self.isolation not in (None, "thread", "process"):
            raise ValueError(f"pipeline {self.name!r}: isolation must be 'thread' or 'process', got {self.isolation!r}")
        for arg in ("concurrency", "max_executions", "max_memory_mb"):
            v = getattr(self, arg)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"pipeline {self.name!r}: {arg} must be a positive integer, got {v!r}")
        if self.concurrency > 1 and not self.is_async:
            raise ValueError(
                f"pipeline {self.name!r}: concurrency > 1 needs an async pipeline "
                "(a sync slot runs one event at a time)"
            )
        if self.scaling_options is not None and not isinstance(self.scaling_options, dict):
            raise TypeError(f"pipeline {self.name!r}: scaling_options must be a dict, got {self.scaling_options!r}")
        self.scaling_options = check_scaling_options(self.scaling, self.scaling_options, f"pipeline {self.name!r}")
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

    def settings(self, isolation: str, worker_cmd: Optional[List[str]]) -> _core.PipelineSettings:
        """This pipeline as the engine takes it (every field named once, here). `isolation`: the
        pipeline's, or the App's default; `worker_cmd`: how its worker processes start
        ("process" only)."""
        key, dedupe = self.key, self.dedupe
        return _core.PipelineSettings(
            name=self.name,
            key="field" if isinstance(key, str) else ("callable" if callable(key) else "none"),
            key_field=key if isinstance(key, str) else None,
            key_fn=_body_fn(key) if callable(key) else None,
            missing_key=self.missing_key,
            min_slots=self.min_slots,
            max_slots=self.max_slots,
            timeout=self.timeout,
            max_body_bytes=self.max_body_bytes,
            queue_size=self.queue_size,
            max_batch=self.max_batch,
            isolation=isolation,
            worker_cmd=worker_cmd,
            concurrency=self.concurrency,
            max_executions=self.max_executions,
            max_memory_mb=self.max_memory_mb,
            signature=self.signature.settings() if self.signature else None,
            reply_async=self.reply == "async",
            dedupe=_dedupe_mode(dedupe),
            dedupe_field=dedupe if isinstance(dedupe, str) else None,
            dedupe_fn=_body_fn(dedupe) if _dedupe_mode(dedupe) == "callable" else None,
            dedupe_window=self.dedupe_window,
            retries=self.retries,
            retry_backoff=self.retry_backoff,
            events=self.events,
            events_from=self.events_from,
        )


def _dedupe_mode(dedupe: Any) -> str:
    if isinstance(dedupe, bool):
        return "headers" if dedupe else "off"
    return "field" if isinstance(dedupe, str) else "callable"


def _body_fn(f: Callable[[Any], Any]) -> Callable[[bytes], Optional[str]]:
    """`f(event)` as the engine calls it: on the raw body, returning a str or None."""

    def compute(body: bytes) -> Optional[str]:
        value = f(_json.loads(body))
        return None if value is None else str(value)

    return compute
