"""The seam around faust-streaming and aiokafka: the only package that reaches into
their internals (the transport, the producer's flush, offsets and log ends, re-reads
of a partition, the connection options). Everything else uses its public names.
``make lint`` enforces it (import-linter, ``pyproject.toml``; ruff's SLF001)."""
