"""The documents a newcomer reads: README.md stays a guide (about 250 lines at most), and every link
and every file or command named in README.md, REFERENCE.md and docs/ points at something that
exists (a file, a heading of a file, a script)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "REFERENCE.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
SCRIPT = re.compile(r"python (?:-m )?([\w/]+\.py)\b")


def slug(heading):
    """A Markdown heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


def test_the_readme_is_a_guide_of_about_250_lines_at_most():
    assert len((REPO / "README.md").read_text().splitlines()) <= 260


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_points_at_a_file_that_exists_and_a_heading_it_has(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_script_a_document_tells_to_run_exists(document):
    missing = [script for script in SCRIPT.findall(document.read_text())
               if not (REPO / script).exists()]
    assert not missing, missing
