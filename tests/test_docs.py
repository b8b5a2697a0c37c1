"""The docs keep up with the code: links resolve, every setting and check id is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from django_statemodes.conf import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"`[^`\n]*`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page: Path) -> None:
    for target in LINK.findall(CODE.sub("", page.read_text())):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_setting_is_documented_with_its_default() -> None:
    documented = (ROOT / "docs" / "settings.md").read_text()
    names = [name for name in vars(Settings) if name.startswith("STATEMODES_")]
    assert len(names) > 15
    missing = [name for name in names if f"`{name}`" not in documented]
    assert missing == []


def test_every_check_id_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "django_statemodes").rglob("*.py"))
    ids = set(re.findall(r"django_statemodes\.[EW]\d{3}", source))
    documented = (ROOT / "docs" / "checks.md").read_text()
    assert len(ids) > 20
    assert sorted(i for i in ids if f"`{i}`" not in documented) == []


def test_the_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```sh"
    assert lines[1].startswith("scripts/demo.sh")
    assert lines[2].startswith("scripts/test.sh")
    assert (ROOT / "scripts" / "demo.sh").exists() and (ROOT / "scripts" / "test.sh").exists()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
