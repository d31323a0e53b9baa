"""The Faust App. Agents and views are found by autodiscovery, never imported here."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from app import auth, plugins
from app import settings as _settings
from app.contract import MAX_RECORD_BYTES
from app.logs import JsonFormatter, logging_config
from app.shutdown import Shutdown
from stream import flush
from stream import worker as stream_worker
from stream.consumer import drop_unacked
from stream.kafka import faust_credentials
from stream.store import LEDGER, prepare_tables, record_clean_stop
from stream.transport import faust_broker_url
from web import guard


def stop_startup(exc: _settings.SettingError) -> None:
    """One clear log line naming the setting, then exit: no traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("sensorstream.settings")
    log.addHandler(handler)
    log.critical("cannot start: %s", exc, extra={"setting": exc.name})
    raise SystemExit(2) from None


#: The tables written only through ``stream.store.send_changelog`` (``TableStore``), so
#: that ``stream.store.LEDGER`` knows whether their stores equal their changelogs after a
#: stop. Faust's own table writes (the locations table, plugins' tables) are not
#: followed: those stores are always rebuilt from their changelogs.
KEPT_ON_CLEAN_STOP = ("state",)

#: What ``prepare_tables`` did, logged once logging is set up (``report_tables``).
_prepared: dict[str, Any] = {}


class Worker(stream_worker.Worker):
    """The ``worker`` command's worker: only it drops the local tables, and its stop on
    SIGTERM or SIGINT is bounded (``app.shutdown``: the clock starts at the signal).

    Faust sends ``on_worker_init`` for every ``faust -A app`` command (``load``,
    ``replay``, ...), which may run beside a worker sharing its ``DATA_DIR``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shutdown.arm()

    async def on_first_start(self) -> None:
        _prepared.update(prepare_tables(Path(self.app.conf.tabledir), KEPT_ON_CLEAN_STOP))
        await super().on_first_start()

    def on_stop_signal(self, sig: signal.Signals) -> None:
        shutdown.begin(f"signal {sig.name}")

    def on_loop_shut_down(self) -> None:
        """A clean stop's mark for the next start (``record_clean_stop``), then the end of
        the process within the stop's bound (``Shutdown.exit_now``)."""
        if shutdown.started:
            kept = record_clean_stop(Path(self.app.conf.tabledir), KEPT_ON_CLEAN_STOP)
            logging.getLogger(__name__).info(
                "local tables kept for the next start" if kept else
                "local tables not kept: some writes may not be in the changelogs",
                extra={"tables": list(KEPT_ON_CLEAN_STOP), "unsent": LEDGER.unsent,
                       "in_flight": LEDGER.in_flight, "failed": LEDGER.failed})
            shutdown.exit_now()


class App(stream_worker.App):
    """Faust's App whose stop, in the ``worker`` command, cannot wait forever for
    messages the agents hold."""

    async def on_stop(self) -> None:
        shutdown.begin("stop")
        await super().on_stop()

    def drain_budget(self) -> float | None:
        """Faust waits, at a rebalance and at the stop, until every message an agent was
        given is acknowledged. At the stop the wait ends with the drain's budget."""
        return shutdown.drain_budget() if shutdown.started else None

    async def on_drain_expired(self, consumer: Any) -> None:
        """The sinks stop retrying and the messages still held are dropped
        unacknowledged, so they are not committed and the next worker reads them again."""
        await shutdown.give_up()
        dropped = drop_unacked(consumer)
        logging.getLogger(__name__).warning(
            "shutdown: messages not stored within the drain's time are not committed; "
            "they are read again after the restart",
            extra={"messages": dropped, "shutdown_timeout_s": shutdown.timeout})


flush.install()

try:
    settings = _settings.load()
except _settings.SettingError as error:
    stop_startup(error)

shutdown = Shutdown(settings.shutdown_timeout)


def discovered() -> list[str]:
    """The project's packages and the enabled plugins' modules (app.plugins), which Faust
    scans at start-up; a plugin not installed or failing to import stops start-up."""
    try:
        return ["agents", "web", "app.commands", *plugins.modules(settings.plugins)]
    except _settings.SettingError as error:
        stop_startup(error)


app = App(
    settings.app_id,
    broker=faust_broker_url(settings.broker),
    broker_credentials=faust_credentials(settings),
    store="rocksdb://",
    datadir=settings.data_dir,
    origin="app",
    autodiscover=discovered,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    consumer_auto_offset_reset=settings.offset_reset,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    canonical_url=settings.canonical_url,
    producer_max_request_size=MAX_RECORD_BYTES + 64 * 1024,
    key_serializer="raw",
    value_serializer="raw",
    logging_config=logging_config(),
    Worker=Worker,
    # Faust's own /table/ and /router/ views are off: undocumented, they showed any
    # table's raw values and answered an unknown table with 503 (issue 18's fuzz test).
    web_tables_enabled=False,
    web_router_enabled=False,
    # Outermost first: no view answers with a traceback; tokens; then parameters.
    web_application_options={
        "middlewares": [guard.last_resort,
                        auth.middleware(settings.api_tokens, settings.protect_reads),
                        guard.checked_params]},
)


@app.task
async def report_tables() -> None:
    """Logged once the worker runs: logging is not set up yet at the first start."""
    if _prepared:
        logging.getLogger(__name__).info(
            "local tables kept after a clean stop; the others dropped: rebuilt from their "
            "changelogs" if _prepared["kept"] else
            "local tables dropped: rebuilt from their changelogs", extra=_prepared)


@app.task
async def freeze_startup_heap() -> None:
    """Once the tables are recovered, the objects start-up made (modules, classes, Faust's
    and the libraries' structures: most of the heap) leave the garbage collector's view.
    Each full collection walked all of them, 75-140 ms with the event loop stopped, so a
    few requests or a batch at the wrong moment waited that long (issue 18's /health
    bound). What the worker makes afterwards is collected as before."""
    await app.tables.recovery.completed.wait()
    gc.collect()
    gc.freeze()
    logging.getLogger(__name__).info("start-up heap frozen for the garbage collector",
                                     extra={"objects": gc.get_freeze_count()})
