"""Background threads beside a pass: read-ahead keeps order, raises the producer's error in the consumer,
and stops (closing its source) when the consumer stops early; the writer writes in order."""

import threading
import time

import pytest

from linreg.pipeline.background import read_ahead


def test_read_ahead_keeps_order_and_stays_at_most_depth_ahead():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for item in read_ahead(source(), depth=2):
        time.sleep(0.001)
        assert len(produced) <= item + 1 + 2 + 1  # the item in hand, two waiting, one being put
        seen.append(item)
    assert seen == list(range(50))


def test_read_ahead_raises_the_producers_error_after_its_items():
    def source():
        yield 1
        yield 2
        raise ValueError("damaged batch")

    got = []
    with pytest.raises(ValueError, match="damaged batch"):
        for item in read_ahead(source()):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_the_producer_and_closes_its_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    reader = read_ahead(source())
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    assert closed.wait(5)
    assert not any(t.name == "read-ahead" for t in threading.enumerate())
