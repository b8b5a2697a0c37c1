"""Fetch Django's own session tests from the Django sdist, at test time.

Nothing of Django's code is kept in this repository: the sdist of the installed Django version is
downloaded from PyPI with pip (it ships ``tests/``; the wheel does not) and only
``tests/sessions_tests`` is extracted into ``.djangotests/django-<version>/``. The first test
module that builds Django's suite (tests/django_suite.py) fetches it; importing the settings
never does.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent / ".djangotests"
MEMBER = "tests/sessions_tests/"


def django_tests_path() -> Path:
    """Return a directory holding ``sessions_tests`` for the installed Django, fetching it once."""
    version = django.__version__
    target = ROOT / f"django-{version}"
    if (target / "sessions_tests" / "tests.py").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                f"django=={version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            prefix = f"{tar.getnames()[0].split('/')[0]}/{MEMBER}"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            if not members:
                raise RuntimeError(f"{sdist.name} has no {MEMBER}")
            for member in members:
                member.name = "sessions_tests/" + member.name[len(prefix) :]
                tar.extract(member, target, filter="data")
    return target


if __name__ == "__main__":
    print(django_tests_path())
