"""Docstrings, comments and docs cite only documents that are in the repository: the method pages
(docs/methods/*.md, one per paper, each with its table of differences from the original code), the papers and the
original repositories' files. The project's specification notes (SPEC.md, DESIGN.md) are not part of it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "benchmarks", "workflow", "config", "docs", "profiles", "tests")
OUTSIDE_DOCUMENT = re.compile(r"\bSPEC\b(?!IAL)|SPEC\.md|DESIGN\.md|\bDESIGN section")
METHOD_PAGES = ("dsp.md", "fine_grained_rlhf.md", "ilf.md", "rrhf.md")


def scanned_files() -> list[Path]:
    files = [ROOT / "Snakefile", ROOT / "README.md", ROOT / "Makefile"]
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".smk", ".md", ".yaml", ".yml", ".rst", ".txt", ".json"}:
                files.append(path)
    return [path for path in files if path != Path(__file__).resolve()]


def test_nothing_cites_the_specification_notes_outside_the_repository():
    cited = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE_DOCUMENT.search(line):
                cited.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert cited == [], "\n".join(cited)


def test_every_cited_docs_page_exists():
    missing = []
    for path in scanned_files():
        for match in re.finditer(r"\bdocs/[\w/.-]+\.md\b", path.read_text(errors="replace")):
            if not (ROOT / match.group(0)).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert missing == [], "\n".join(missing)


def test_each_paper_has_a_method_page_with_its_differences_from_the_original_code():
    for name in METHOD_PAGES:
        text = (ROOT / "docs/methods" / name).read_text()
        section = re.search(r"^## Differences from the original code\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        assert section is not None, f"{name}: no '## Differences from the original code' section"
        rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
        assert len(rows) >= 4, f"{name}: the differences table has {len(rows) - 2} rows"
        assert rows[0].lower().startswith("| what |") and "why" in rows[0].lower(), f"{name}: {rows[0]}"
