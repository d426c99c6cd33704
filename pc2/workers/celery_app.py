"""The Celery app every worker runs: ``celery -A pc2.workers.celery_app worker -Q gpu,cpu``.

Configuration comes from the same ``Settings`` as the API (``PC2_*`` variables), through
``pc2.service.core.queue.celery_config``, so producer and consumer agree on broker and routing.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from pc2.service.core.config import get_settings
from pc2.service.core.db import reset_engines
from pc2.service.core.queue import make_celery

log = logging.getLogger("pc2.workers")

app = make_celery(get_settings(), main="pc2")
app.conf.include = ["pc2.workers.ingest", "pc2.workers.curate", "pc2.workers.export", "pc2.workers.webhook"]


@worker_process_init.connect
def _fresh_pool_in_child(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    # A forked child inherits the parent's pooled DB sockets; sharing them corrupts both sides.
    reset_engines(close=False)


@worker_ready.connect
def _start_watchdog(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    from pc2.workers.recovery import Watchdog

    Watchdog.start(get_settings())


@worker_shutdown.connect
def _stop_watchdog(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    from pc2.workers.recovery import Watchdog

    Watchdog.stop()
