"""The README as users meet it: short, every link resolving, no lab notes. That every command block runs as written is
tested in test_pipeline.py, on the DVC run the pipeline tests share."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)\n```$", README.read_text(), flags=re.M | re.S)


def test_readme_is_short_and_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: link {target}"
    linked = set(re.findall(r"\]\(docs/([^)]+\.md)\)", text))
    assert linked == {p.name for p in DOCS}, "every docs page is linked from the README, and only those"


def test_readme_and_docs_speak_of_the_project_not_its_history() -> None:
    for page in [README, *DOCS]:
        words = page.read_text().lower()
        for marker in ("session", "until 2026", "seen on 2026", "before this work"):
            assert marker not in words, f"{page.name}: {marker!r}"
