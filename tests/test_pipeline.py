"""Bulk encoding's pipeline (avcil.model.encoders.pipeline): what each item lists is encoded in batches, in the items'
order, however many calls run at a time; `prepare` sees the items in order; its error reaches the caller."""

import threading
import time

import numpy as np
import pytest

from avcil.model.encoders.pipeline import pipelined


def test_batches_come_back_in_order_with_calls_running_at_the_same_time():
    seen, running, most = [], [0], [0]
    lock = threading.Lock()

    def prepare(item: int) -> list[int]:
        seen.append(item)
        return [item * 10 + k for k in range(item % 3)]  # 0, 1 or 2 units an item

    def encode(batch: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (1 + batch[0] % 2))  # calls finish out of order
        with lock:
            running[0] -= 1
        return batch

    out = list(pipelined(range(20), prepare, encode, batch_size=3, calls=2))
    expected = [item * 10 + k for item in range(20) for k in range(item % 3)]
    assert [unit for batch in out for unit in batch] == expected
    assert all(len(batch) == 3 for batch in out[:-1])
    assert seen == list(range(20)) and most[0] == 2


def test_a_process_held_to_one_core_prepares_and_encodes_on_its_own_thread():
    threads = set()

    def prepare(item: int) -> list[int]:
        threads.add(threading.get_ident())
        return [item]

    def encode(batch: list[int]) -> list[int]:
        threads.add(threading.get_ident())
        return batch

    out = list(pipelined(range(7), prepare, encode, batch_size=3, workers=0))
    assert out == [[0, 1, 2], [3, 4, 5], [6]] and threads == {threading.get_ident()}


def test_an_error_while_preparing_reaches_the_caller():
    def prepare(item: int) -> list[int]:
        if item == 5:
            raise ValueError("clip 5: not a video")
        return [item]

    with pytest.raises(ValueError, match="clip 5"):
        list(pipelined(range(10), prepare, lambda batch: batch, batch_size=2, calls=2))


def test_the_profile_encodes_each_items_inputs_as_one_batch_after_another_would(tiny_profile):
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=tiny_profile.audio_input_shape).astype(np.float32),
              rng.normal(size=tiny_profile.visual_input_shape).astype(np.float32)) for _ in range(5)]
    listed = [pairs[:2], pairs[2:3], pairs[3:]]
    audio, visual = tiny_profile.encode_each(listed, lambda each: each, batch_size=2, progress=False, total=5)
    alone_audio, alone_visual = tiny_profile.encode_batch(*(np.stack(part) for part in zip(*pairs)))
    np.testing.assert_allclose(audio, alone_audio, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(visual, alone_visual, rtol=1e-5, atol=1e-6)
