import queue

from server.search.batches import next_batch


def test_a_batch_takes_what_waits_up_to_its_size_and_stops_at_the_mark():
    waiting: queue.Queue = queue.Queue()
    for item in (1, 2, 3, None):
        waiting.put(item)
    assert next_batch(waiting, 2) == [1, 2]
    assert next_batch(waiting, 5) == [3]  # the stop mark ends the batch ...
    assert next_batch(waiting, 5) is None  # ... and the next call stops
    assert next_batch(waiting, 5) is None  # the mark stays for any later caller
