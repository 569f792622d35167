"""The watch threads' mailbox: nothing lost or reordered, one wake-up of the event loop per
batch of deliveries instead of one per delivery."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from unittest import mock

import pytest

from dispatcher.kube.mailbox import Mailbox

pytestmark = pytest.mark.unit


async def collect(mailbox: Mailbox[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    while len(got) < count:
        got += await asyncio.wait_for(mailbox.take(), 10)
    return got


async def test_deliveries_of_several_threads_arrive_whole_and_in_order() -> None:
    loop = asyncio.get_running_loop()
    mailbox = Mailbox[tuple[int, int]](loop, window=0.002)
    threads, per_thread = 3, 400

    def produce(thread: int) -> None:
        rng = random.Random(thread)
        for i in range(0, per_thread, 2):
            mailbox.put([(thread, i), (thread, i + 1)])
            if rng.random() < 0.3:
                time.sleep(rng.random() / 1000)  # now and then after the consumer took

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for producer in producers:
        producer.start()
    got = await collect(mailbox, threads * per_thread)
    for producer in producers:
        producer.join()
    assert len(got) == threads * per_thread
    for thread in range(threads):
        assert [i for t, i in got if t == thread] == list(range(per_thread))


async def test_a_burst_of_deliveries_wakes_the_loop_once_per_window() -> None:
    loop = asyncio.get_running_loop()
    with mock.patch.object(loop, "call_soon_threadsafe",
                           wraps=loop.call_soon_threadsafe) as wake:
        mailbox = Mailbox[tuple[int, int]](loop, window=0.05)
        deliveries = 200

        took: list[float] = []

        def produce() -> None:
            began = time.monotonic()
            for i in range(deliveries):
                mailbox.put([(0, i)])
                time.sleep(0.0001)
            took.append(time.monotonic() - began)

        producer = threading.Thread(target=produce)
        producer.start()
        got = await collect(mailbox, deliveries)
        producer.join()
    assert [i for _, i in got] == list(range(deliveries))
    # A delivery costs a wake-up only when none is pending: one per window the deliveries
    # spanned (however slowly the producer ran), not one per delivery.
    assert 1 <= wake.call_count <= math.ceil(took[0] / 0.05) + 1 < deliveries / 4


async def test_take_waits_for_a_delivery() -> None:
    mailbox = Mailbox[int](asyncio.get_running_loop(), window=0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mailbox.take(), 0.05)
    threading.Thread(target=mailbox.put, args=([7],)).start()
    assert await asyncio.wait_for(mailbox.take(), 5) == [7]
    # Taken: the next take waits again.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(mailbox.take(), 0.05)
