"""Peer programs for the benchmarks: the same windowed job written the way a plain user of
another engine (or of Faust without sensorstream's changes) would write it, so sensorstream's
throughput can be quoted against real alternatives on the same broker and data."""
