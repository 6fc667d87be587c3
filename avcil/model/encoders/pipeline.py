"""Encoding many clips: their inputs prepared (decoded, cut, preprocessed) on threads ahead of the encoders, and the
encoders called on batches of them, as many calls at a time as the profile's runtime takes.

Extraction, field learning from files (`avcil learn --files`) and background windows all encode through here. On a
CPU, ONNX Runtime sessions with one intra-op thread each, called from one thread per core, ran the lite encoders 11 %
faster than calls one after another on two threads each (avcil.export.cached.use_onnxruntime), and decoding the
next clips beside the encoders keeps the cores busy between calls.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def ahead(pool: ThreadPoolExecutor, fn: Callable[[Item], Result], items: Iterable[Item],
          window: int) -> Iterator[Result]:
    """fn over items in order, computed up to `window` items ahead in the pool (bounded memory, unlike map)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pipelined(items: Iterable[Item], prepare: Callable[[Item], Iterable[Result]],
              encode: Callable[[list[Result]], object], batch_size: int, workers: int = 1, calls: int = 1) -> Iterator:
    """`encode(batch)` for consecutive batches of what `prepare(item)` lists for each item, in order: `prepare` on
    `workers` threads a few batches ahead (with one worker, called in the items' order), `encode` on `calls` threads
    at a time. `workers` 0: both one after the other on the calling thread, for a process held to one core (a
    learner beside the recognizer: decoding ahead on a thread of its own would take a second core)."""
    if workers == 0:
        yield from map(encode, batches((one for item in items for one in prepare(item)), batch_size))
        return
    with ThreadPoolExecutor(max(1, workers)) as preparing, ThreadPoolExecutor(max(1, calls)) as encoding:
        listed = ahead(preparing, prepare, items, window=2 * batch_size)
        yield from ahead(encoding, encode, batches((one for each in listed for one in each), batch_size),
                         max(1, calls))
