# The sensorstream worker image: the project installed with its dependencies; by default it
# runs the Procfile's worker command. docker-compose.yml also runs the simulator from it.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/sensorstream

# Dependencies first (a layer that survives code changes), then the code itself.
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
COPY sinks ./sinks
COPY stream ./stream
COPY web ./web
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /srv/sensorstream sensorstream \
    && mkdir -p /data \
    && chown sensorstream /data

# RocksDB tables and lake staging live in /data (a volume: staging must survive a restart).
USER sensorstream
VOLUME ["/data"]
EXPOSE 6066

CMD ["faust", "-A", "app", "worker", "-l", "info"]
