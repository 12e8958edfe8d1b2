"""The README's run command: `conserver demo` on a private stack it starts itself."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conserver.dev.devstack import free_port
from tests.helpers.proc import ROOT


def test_demo_stores_samples_in_every_store_and_cleans_up():
    work = Path(tempfile.mkdtemp(prefix="conserver-demo-"))
    work.chmod(0o755)  # the postgres user must reach the state folder
    try:
        r = subprocess.run([sys.executable, "-m", "conserver", "demo", "--once", "--sample", "60",
                            "--state-dir", str(work / "state"), "--env-file", str(work / ".env")],
                           cwd=work, capture_output=True, text=True, timeout=240,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                "CONSERVER_METRICS_PORT": str(free_port())})
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        for store in ("postgres", "s3", "elasticsearch"):
            assert any(line.split()[:2] == [store, "60/60"] for line in r.stdout.splitlines()), r.stdout
        assert "REDIS_URL=redis://127.0.0.1:" in (work / ".env").read_text()
        assert "master exiting with code 0" in r.stderr  # conserver drained and stopped
    finally:
        shutil.rmtree(work, ignore_errors=True)
