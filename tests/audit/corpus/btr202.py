# ruff: noqa
"""BTR202: unbounded queues."""

import asyncio
import queue
from asyncio import Queue

jobs = asyncio.Queue()  # expect: BTR202
events = Queue(maxsize=0)  # expect: BTR202
work = queue.Queue()  # expect: BTR202
simple = queue.SimpleQueue()  # expect: BTR202
prio = asyncio.PriorityQueue()  # expect: BTR202

bounded = asyncio.Queue(maxsize=100)
bounded_positional = asyncio.Queue(100)
thread_bounded = queue.Queue(maxsize=10)
