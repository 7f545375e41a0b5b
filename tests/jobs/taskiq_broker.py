"""The RabbitMQ taskiq broker of one test queue (workers and producers build the same one)."""

from __future__ import annotations

from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.queue import Queue, QueueType


def make_broker(url: str, queue: str, *, qos: int = 4) -> AioPikaBroker:
    """``queue`` (quorum) and ``<queue>.delay`` (classic, per-message TTL) for the retries."""
    return AioPikaBroker(
        url,
        qos=qos,
        task_queues=[Queue(name=queue)],
        delay_queue=Queue(name=f"{queue}.delay", type=QueueType.CLASSIC),
        dead_letter_queue=Queue(name=f"{queue}.dead", type=QueueType.CLASSIC),
    )
