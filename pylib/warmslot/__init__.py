"""warmslot: Python bot pipelines behind webhooks, on pre-warmed slots, with a Rust ingress."""

import os as _os

# NOTE: the extension's Rust allocations go to mimalloc, which by default gives memory that stayed
# free for 1 s back to the OS; under steady load the same memory was given back and faulted in
# again (as zeroed 2 MiB huge pages): 2,463 page faults in 5 s at 42k req/s, about 3% of a process
# slot thread's CPU (perf: `clear_page_erms`). After 10 s instead: 11 faults, ~20 MB more RSS. It
# must be set before `_core` loads (mimalloc reads its options when the library is loaded); a value
# the user set wins, and child processes inherit it (worker processes load `_core` too).
_os.environ.setdefault("MIMALLOC_PURGE_DELAY", "10000")

from ._core import __version__  # noqa: E402
from .app import App, Server, StartupError  # noqa: E402
from .context import Context  # noqa: E402
from .spec import (  # noqa: E402
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
