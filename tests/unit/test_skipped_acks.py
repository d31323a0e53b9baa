"""Faust acks the events a stream skips (the flow stopped for a rebalance, in the
generation still current) "so that the lag does not grow". A bundle acknowledges a
whole fetch, so that ack must not make its offsets committable: no agent saw them."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP

from stream.transport import Bundle, Consumer

TOPIC = "aggregates"


def consumer(generation: int = 3) -> Consumer:
    this = object.__new__(Consumer)  # no worker: only the ack bookkeeping runs
    this.app = SimpleNamespace(consumer_generation_id=generation,
                               topics=SimpleNamespace(acks_enabled_for=lambda t: True))
    this._committed_offset = defaultdict(lambda: None)
    this._committed_offset[TP(TOPIC, 0)] = 120
    this._acked = defaultdict(list)
    this._acked_index = defaultdict(set)
    this._unacked_messages = set()
    this._n_acked = 0
    this._waiting_for_ack = None
    return this


def bundle(first: int, last: int, generation: int = 3) -> Bundle:
    records = [SimpleNamespace(offset=o, timestamp=0, timestamp_type=0,
                               serialized_value_size=10) for o in range(first, last + 1)]
    return Bundle(TP(TOPIC, 0), records, first, generation)


def test_a_bundle_no_stream_handed_to_an_agent_is_not_acknowledged():
    this = consumer()
    skipped = bundle(120, 1079)  # taken from a queue as the flow stopped: never tracked
    this._unacked_messages.add(skipped)

    assert this.ack(skipped) is False
    assert skipped.acked and skipped not in this._unacked_messages  # wait_empty ends
    assert this._acked[TP(TOPIC, 0)] == [] and this._n_acked == 0


def test_a_delivered_bundle_acknowledges_every_offset_it_covers():
    this = consumer()
    delivered = bundle(120, 1079)
    delivered.tracked = True  # a stream handed it to its agent

    assert this.ack(delivered) is True
    assert this._acked[TP(TOPIC, 0)] == list(range(120, 1080))


def test_a_bundle_of_an_earlier_generation_is_not_acknowledged():
    this = consumer(generation=4)
    old = bundle(120, 1079, generation=3)
    old.tracked = True

    assert this.ack(old) is False
    assert this._acked[TP(TOPIC, 0)] == []
