"""The repo stands alone: every document that code, tests, the README or docs/ cite is in the repo, and every cited
`#anchor` is a heading of that document (GitHub's anchor slugs). See docs/architecture.md#layers for where each
module lives; the docs themselves are listed in README.md#documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where citations are made: the package, the tests, the scripts, the README and the docs.
SCANNED_DIRS = ("avcil", "tests", "scripts", "docs")
SCANNED_SUFFIXES = {".py", ".md", ".sh", ".toml", ".html", ".js", ".cfg", ".txt"}
# A markdown file named in text: an optional folder path, a name (globs allowed), `.md`, an optional #anchor.
MD_CITATION = re.compile(r"(?<![\w/.*{}-])((?:[\w.*-]+/)*[\w*-][\w.*-]*\.md)(#[\w-]+)?(?![\w])")
# A markdown link's target: [text](target).
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repo path named in docs/ (`avcil/...py`, `tests/...py`, ...), which must exist too.
DOC_PATH = re.compile(r"(?<![\w/.-])((?:avcil|tests|scripts|benchmarks)/[\w/.*-]*\.(?:py|sh|json|md|png))")
# An outside document cited by its name and a section sign and number, with or without the suffix.
SECTION_SIGN = re.compile(r"\b([A-Z][A-Z_]+)(?:\.md)?\s*§")


def scanned_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md"]
    for folder in SCANNED_DIRS:
        files += [p for p in sorted((root / folder).rglob("*"))
                  if p.is_file() and p.suffix in SCANNED_SUFFIXES and "__pycache__" not in p.parts]
    return [p for p in files if p.is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case, punctuation other than '-' and '_'
    dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of a markdown document's headings (outside code blocks); a repeated heading gets -1, -2, ..."""
    found, seen, fenced = set(), {}, False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def resolve(target: str, source: Path, root: Path) -> list[Path]:
    """The files a cited path names: relative to the repo root, or to the citing file's folder; a glob names every
    file it matches; a bare name (no folder) also names any file of that name in the repo."""
    found = []
    for base in (root, source.parent):
        found += [p for p in base.glob(target) if p.is_file()] if "*" in target else (
            [base / target] if (base / target).is_file() else [])
    if not found and "/" not in target:
        found = [p for p in root.rglob(target) if p.is_file() and ".git" not in p.parts]
    return found


def citation_problems(root: Path = ROOT, files: list[Path] | None = None) -> list[str]:
    problems = []
    for path in files if files is not None else scanned_files(root):
        text = path.read_text(errors="replace")
        where = path.relative_to(root)
        cited = [(m.group(1), m.group(2)) for m in MD_CITATION.finditer(text)]
        if path.suffix == ".md":
            for link in MD_LINK.findall(text):
                if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
                    continue
                target, _, anchor = link.partition("#")
                cited.append((target or str(path.relative_to(root)), f"#{anchor}" if anchor else None))
            if path.parent == root / "docs":
                cited += [(m.group(1), None) for m in DOC_PATH.finditer(text)]
        for name in SECTION_SIGN.findall(text):
            problems.append(f"{where}: cites {name} by section, a document that is not in the repo")
        for target, anchor in cited:
            if "{" in target:  # a template in code (f"{name}.md"), not a citation
                continue
            docs = resolve(target, path, root)
            if not docs:
                problems.append(f"{where}: cites {target}, which is not in the repo")
            elif anchor and not any(anchor[1:] in anchors(d) for d in docs if d.suffix == ".md"):
                problems.append(f"{where}: cites {target}{anchor}, which is no heading of {target}")
    return problems


def test_every_cited_document_and_anchor_is_in_the_repo():
    problems = citation_problems()
    assert not problems, "\n".join(problems)


def test_the_docs_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    for name in ("method.md", "architecture.md", "decision.md"):
        assert (ROOT / "docs" / name).is_file()
        assert f"docs/{name}" in readme


# Built from parts, so that this file itself cites nothing that is missing.
MD, SECTION = ".md", "\u00a7"


@pytest.mark.parametrize("citation, complaint", [
    (f"see docs/nowhere{MD} for the method", f"docs/nowhere{MD}, which is not in the repo"),
    (f"see docs/method{MD}#no-such-section", f"docs/method{MD}#no-such-section, which is no heading"),
    (f"as OUTSIDE{MD} {SECTION}4 says", "cites OUTSIDE by section"),
    (f"the paper's form (REFERENCE {SECTION}2)", "cites REFERENCE by section"),
    (f"[the head](method{MD}#no-head-here)", f"method{MD}#no-head-here, which is no heading"),
    (f"[the head](../avcil/no_such_module.py)", "no_such_module.py, which is not in the repo"),
])
def test_the_check_fails_on_a_bogus_citation(tmp_path, citation, complaint):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / f"method{MD}").write_text("# Method\n\n## The analytic readout\n")
    source = tmp_path / "docs" / f"x{MD}" if citation.startswith("[") else tmp_path / "x.py"
    source.write_text(f'"""{citation}"""\n')
    problems = citation_problems(tmp_path, [source])
    assert any(complaint in p for p in problems), problems


def test_the_check_passes_a_good_citation(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / f"method{MD}").write_text("# Method\n\n## The analytic readout\n\n## The `AV-CIL` head (x)\n")
    source = tmp_path / "x.py"
    source.write_text(f'"""docs/method{MD}#the-analytic-readout and docs/method{MD}#the-av-cil-head-x"""\n')
    assert citation_problems(tmp_path, [source]) == []


def test_slugs_follow_github():
    assert slug("The AV-CIL fusion head") == "the-av-cil-fusion-head"
    assert slug("Visual attention distillation (VAD)") == "visual-attention-distillation-vad"
    assert slug("`avcil serve`: the page") == "avcil-serve-the-page"
    assert slug("Sources and windows") == "sources-and-windows"
