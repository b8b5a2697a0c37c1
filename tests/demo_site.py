"""The demo site (testproject/) run for real by scripts/demo.sh, the README's demo command."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tests.conftest import free_port
from tests.server import ROOT, wait_for_port


def demo_env(**extra: str) -> dict[str, str]:
    """This environment without any STATEMODES_DEMO_* or settings module, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEMODES_DEMO_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


@contextmanager
def running_demo(
    *args: str, env: Mapping[str, str] | None = None, wait: float | None = None
) -> Iterator[str]:
    """Run scripts/demo.sh on a free loopback port; yield its base URL; stop its process group.

    ``env``: the demo's settings (STATEMODES_DEMO_*); ``wait``: seconds to wait for the port to answer before yielding (demo.sh migrates first).
    """
    port = free_port()
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "demo.sh"), f"127.0.0.1:{port}", *args],
        cwd=ROOT,
        env=demo_env(**(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the reloader's child and state server too
    )
    try:
        if wait is not None:
            wait_for_port(port, process, timeout=wait)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
