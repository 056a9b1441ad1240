"""Every "contract section N" that a docstring or comment cites is a section of
docs/contract.md, so a reader who follows a citation lands on the rule it names."""

from __future__ import annotations

import re

from tests.support.bench import REPO

CITATION = re.compile(r"contract sections? ([\d.]+(?:(?:, | and |-)[\d.]+)*)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)


def cited() -> dict[str, set[str]]:
    """Section numbers cited, by the file citing them (ranges ``3-5`` give both ends)."""
    found: dict[str, set[str]] = {}
    for path in [*REPO.glob("gsocket/**/*.py"), *REPO.glob("tests/**/*.py")]:
        text = re.sub(r"\s+", " ", path.read_text())
        for match in CITATION.finditer(text):
            numbers = re.split(r", | and |-", match.group(1))
            found.setdefault(str(path.relative_to(REPO)), set()).update(
                n.rstrip(".") for n in numbers
            )
    return found


def test_every_cited_section_exists() -> None:
    sections = set(HEADING.findall((REPO / "docs" / "contract.md").read_text()))
    assert {"1", "4", "4.5", "11"} <= sections
    citations = cited()
    assert "gsocket/contract/auth.py" in citations  # the pattern finds what is there
    missing = {f: sorted(n - sections) for f, n in citations.items() if n - sections}
    assert missing == {}
