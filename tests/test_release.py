"""The package as released: one version everywhere, the sdist and wheel that `twine check`
accepts with what they should hold, and the supported versions declared where CI tests them."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

import pytest

from django_statemodes import __version__

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()
REPOSITORY = "https://github.com/django-statemodes/django-statemodes"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_installed_metadata_has_the_package_version() -> None:
    # pyproject.toml reads __version__ (setuptools dynamic version): no second copy to forget.
    assert 'dynamic = ["version"]' in PYPROJECT
    assert 'attr = "django_statemodes.__version__"' in PYPROJECT
    assert version("django-statemodes") == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_the_state_server_shows_the_version() -> None:
    script = Path(sys.executable).parent / "statemodes-stateserver"
    assert script.exists(), f"{script} is not installed (pip install -e . makes it)"
    for command in ([str(script)], [sys.executable, "-m", "django_statemodes.stateserver"]):
        shown = run(*command, "--version")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == f"statemodes-stateserver {__version__}"


def test_runstateserver_shows_the_package_version_not_djangos() -> None:
    shown = run(sys.executable, "manage.py", "runstateserver", "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"django-statemodes {__version__}"


def test_the_changelog_has_this_release() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{__version__}]" in changelog
    assert f"[{__version__}]: {REPOSITORY}" in changelog


def test_the_release_files_exist() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "The django-statemodes developers" in license_text
    security = (ROOT / "SECURITY.md").read_text()
    assert f"{REPOSITORY}/security/advisories/new" in security
    assert "scripts/test.sh" in (ROOT / "CONTRIBUTING.md").read_text()


def test_the_readme_links_only_absolute_urls() -> None:
    # The README is the package index's long description, where relative links break.
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    assert [link for link in links if not link.startswith("https://")] == []


def test_every_project_url_points_to_the_repository_or_the_docs_site() -> None:
    urls = dict(re.findall(r'^(\w+) = "(https://[^"]+)"$', PYPROJECT, re.MULTILINE))
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert urls["Homepage"] == REPOSITORY
    assert urls["Changelog"].startswith(REPOSITORY) and urls["Issues"].startswith(REPOSITORY)


def ci_legs() -> list[tuple[str, str]]:
    """(Django minor, Python minor) of each leg of .ci/run."""
    legs = re.findall(
        r'^run_leg (3\.\d+) "django>=(\d+\.\d+),', (ROOT / ".ci" / "run").read_text(), re.MULTILINE
    )
    return [(django, python) for python, django in legs]


def test_every_declared_version_is_tested_by_ci_and_every_tested_one_declared() -> None:
    legs = ci_legs()
    assert ("5.2", "3.11") in legs
    declared_django = set(re.findall(r'"Framework :: Django :: (\d+\.\d+)"', PYPROJECT))
    declared_python = set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT))
    assert declared_django == {django for django, _ in legs}
    assert declared_python == {python for _, python in legs}
    # Every pair that exists is a leg: Django 6 needs Python 3.12 or later.
    pairs = {
        (django, python)
        for django in declared_django
        for python in declared_python
        if int(django.split(".")[0]) < 6 or int(python.split(".")[1]) >= 12
    }
    assert sorted(legs) == sorted(pairs)
    # Django is capped below the next major, which no leg has tested.
    newest_major = max(int(django.split(".")[0]) for django, _ in legs)
    assert f'"django>=5.2,<{newest_major + 1}.0"' in PYPROJECT
    assert f'requires-python = ">={min(declared_python)}"' in PYPROJECT


def test_every_docs_page_is_in_the_site_navigation() -> None:
    # mkdocs build --strict (scripts/test.sh) fails on a page left out; this says which at once.
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE))
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - nav) == []
    assert sorted(nav - pages) == []


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel, built as a release is (isolated build), checked by twine."""
    out = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    files = sorted(str(path) for path in out.iterdir())
    checked = run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2
    return out


def package_files() -> set[str]:
    """What the package is made of in the source tree (modules, templates, the typing marker)."""
    package = ROOT / "django_statemodes"
    return {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and path.suffix in {".py", ".html", ".typed"}
    }


@pytest.mark.slow
def test_the_wheel_holds_the_whole_package_and_its_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"django_statemodes-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(
            archive.read(f"django_statemodes-{__version__}.dist-info/METADATA").decode()
        )
    assert package_files() <= names
    assert not any(name.startswith(("tests/", "testproject/", "benchmarks/")) for name in names)
    assert f"django_statemodes-{__version__}.dist-info/licenses/LICENSE" in names
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("Requires-Dist", [])[:2] == ["django<7.0,>=5.2", "asgiref>=3.6"]
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL", []))
    assert urls["Homepage"] == REPOSITORY
    assert "Framework :: Django :: 6.0" in metadata.get_all("Classifier", [])
    # The long description is the README, with the set-up commands first.
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert description.startswith("```sh\nscripts/demo.sh")


@pytest.mark.slow
def test_the_sdist_installs_the_package_and_leaves_the_test_suite_out(dist: Path) -> None:
    # The tests need the repository around them (scripts, test project, services): they run
    # from a clone, so the sdist holds none of them rather than some.
    (sdist,) = dist.glob("*.tar.gz")
    top = f"django_statemodes-{__version__}"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    expected = {"LICENSE", "README.md", "CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md"}
    assert expected | {"pyproject.toml"} <= names
    assert package_files() <= names
    left_out = ("tests/", "testproject/", "benchmarks/", "scripts/", "docs/", "localservers/")
    assert [name for name in names if name.startswith(left_out)] == []
