"""The producer's metadata after a send to a topic it did not know (stream.transport).

aiokafka's client asks the broker for every topic until a send names one missing from its
metadata; from then on it asks for the topics it tracks only. The pause of an input topic
sent the first record to the operators' pauses topic (created after the producer's last
refresh), the next refresh dropped every other topic, and a changelog batch already in
the producer lost its leader: every commit waited for it (tests/integration/test_admin.py,
the pause under load). No broker here: the broker's answer is built for exactly the
topics the client would ask for."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.metadata import MetadataResponse_v0

from stream.transport import keep_known_topics

KNOWN = ("readings-by-sensor", "state-changelog")
NEW = "admin-pauses"


def answer(topics: set[str] | None) -> object:
    """The broker's metadata answer for ``topics`` (None: all, the new one included), four
    partitions each, led by broker 0."""
    wanted = (*KNOWN, NEW) if topics is None else sorted(topics)
    return MetadataResponse_v0(
        [(0, "127.0.0.1", 9)],
        [(0, topic, [(0, p, 0, [0], [0]) for p in range(4)]) for topic in wanted])


async def refreshed_after_a_new_topic(patched: bool) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    client = producer.client
    if patched:
        keep_known_topics(client)
    # The first metadata: the client tracks no topic, so it asks for all (KNOWN then).
    assert not client._topics
    client.cluster.update_metadata(answer(set(KNOWN)))
    client.add_topic(NEW)  # what a send to a topic missing from the metadata does
    client.cluster.update_metadata(answer(client._topics or None))  # the next refresh
    return producer


async def test_a_send_to_a_new_topic_keeps_the_other_topics_in_the_metadata():
    producer = await refreshed_after_a_new_topic(patched=True)
    client = producer.client
    assert client._topics == {*KNOWN, NEW}
    for topic in (*KNOWN, NEW):
        assert client.cluster.leader_for_partition(TopicPartition(topic, 1)) == 0, topic
    client.add_topic(NEW)  # once more: nothing changes
    assert client._topics == {*KNOWN, NEW}


async def test_unpatched_aiokafka_drops_them():
    """Pins the cause: should aiokafka stop narrowing, this test says so (and the patch
    can go)."""
    producer = await refreshed_after_a_new_topic(patched=False)
    client = producer.client
    assert client._topics == {NEW}
    assert client.cluster.leader_for_partition(TopicPartition("state-changelog", 1)) is None
