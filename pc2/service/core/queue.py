"""Celery configuration shared by the API (which only sends tasks by name) and the workers.

The API never imports ``pc2.workers``; both sides build their Celery app from ``celery_config``
so routing, serializer and broker options cannot drift apart.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from pc2.service.core.config import Settings

# Which queue each task goes to: training wants the GPU host, the rest are I/O and CPU bound.
TASK_QUEUES = {
    "ingest.run": "cpu",
    "curate.run": "gpu",
    "export.run": "cpu",
    "webhook.deliver": "cpu",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # job state lives in our own tables, not a result backend
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,  # a killed child's task goes back on the queue
        "worker_prefetch_multiplier": 1,  # one long training task must not hoard others
        "task_default_queue": "cpu",
        "task_routes": {name: {"queue": q} for name, q in TASK_QUEUES.items()},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
        # No fan-out exchange for remote control on the file transport worth its polling cost.
        conf["worker_enable_remote_control"] = False
    else:
        conf["broker_transport_options"] = {"visibility_timeout": settings.BROKER_VISIBILITY_TIMEOUT_S}
    return conf


def make_celery(settings: Settings, main: str = "pc2") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


_clients: dict[str, Celery] = {}
_lock = threading.Lock()


def get_queue_client(settings: Settings) -> Celery:
    """The producer-side Celery app for these settings (cached per broker)."""
    key = f"{settings.broker_url}|{settings.broker_dir}"
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = make_celery(settings, main="pc2-api")
        return client


def send(settings: Settings, name: str, *args: Any, countdown: float | None = None) -> str:
    """Enqueue task ``name`` on its queue; returns the Celery task id."""
    result = get_queue_client(settings).send_task(name, args=list(args), queue=TASK_QUEUES[name],
                                                   countdown=countdown)
    return result.id


def ping_broker(settings: Settings, timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached within ``timeout`` seconds."""
    with get_queue_client(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
