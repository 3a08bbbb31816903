"""Celery side of the Celery peer: the support bot as a Celery task.

Broker and result backend are a real Redis, given by ``CELERY_REDIS_URL``
(the harness starts a private redis-server on a free loopback port).
The worker runs with ``--pool=solo``, so one process owns the per-conversation
state (kept in the worker's memory, like warmslot keeps it in its slot).

    CELERY_REDIS_URL=redis://127.0.0.1:6379/0 \
        celery -A celery_tasks worker --pool=solo --without-gossip --without-mingle --without-heartbeat
"""

import os

from botlogic import support
from celery import Celery

REDIS_URL = os.environ.get("CELERY_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("warmslot_loadtest", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=False,
    result_expires=300,
    worker_prefetch_multiplier=16,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="support")
def support_task(event: dict) -> dict:
    return support(event)
