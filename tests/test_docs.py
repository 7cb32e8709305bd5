"""The documentation reads as a reference: no work-log voice anywhere, links that resolve, a short README.

The repository's text must describe the software and its measurements, not the work that produced them: no
"work sessions", no project issue numbers, no "this machine" (a measurement names its hardware instead).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".ini", ".yml", ".yaml"}

#: Phrases of a work log, each with why it is out of place. Matched case-insensitively. "session" alone is fine
#: (a pytest session, a process session); so is "this machine has ...", a run's error about the host it runs on.
VOICE = {
    r"\bwork[- ]sessions?\b": "a work session",
    r"\b(?:this|next|previous|earlier|last|later) session\b": "a work session",
    r"\bissue\s*#\s*\d+": "a project issue number",
    r"\bissue\s+\d+\b": "a project issue number",
    r"\bthe issue's\b": "a project issue",
    r"\bthis machine\b(?! has\b)": "'this machine' (name the hardware)",
    r"\bthis project's machine\b": "'this project's machine' (name the hardware)",
    r"\ban earlier machine\b": "'an earlier machine' (name the hardware, date or commit)",
    r"\blost with\b": "a story of lost machines (say where the run stopped)",
    r"\blost machines?\b": "a story of lost machines (say where the run stopped)",
    r"\bdid not outlive\b": "a story of lost machines (say where the run stopped)",
    r"\bthat hour\b": "a story of one measurement's circumstances (give the figures)",
    r"\bmeasured here\b": "'measured here' (name the hardware)",
    r"\bTBD\b": "a placeholder (fill it in or drop it)",
}
_VOICE = [(re.compile(pattern, re.IGNORECASE), why) for pattern, why in VOICE.items()]

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _repository_files() -> list[Path]:
    """Tracked files and new files git does not ignore, as paths that exist; skips when git cannot list them."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"git cannot list the repository's files: {error}")
    paths = {ROOT / name for name in listing.split("\0") if name}
    return sorted(p for p in paths if p.is_file())


def voice_findings(text: str) -> list[tuple[int, str, str]]:
    """(line number, matched text, why) for every work-log phrase in ``text``."""
    findings = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        # Wrapped prose splits phrases ("this\nmachine"): each line is read with the start of the next, and a
        # match counts on the line it starts on.
        line = line.rstrip()
        following = lines[number].lstrip(" \t#>*/-") if number < len(lines) else ""
        for pattern, why in _VOICE:
            findings.extend(
                (number, match.group(0), why)
                for match in pattern.finditer(f"{line} {following}")
                if match.start() < len(line)
            )
    return findings


def _prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, numbered from 1, with inline code spans blanked unless not ``blank_code``."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "``", line) if blank_code else line))
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    for _, line in _prose_lines(text, blank_code=False):  # GitHub keeps a code span's text
        heading = _HEADING.match(line)
        if not heading:
            continue
        plain = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))  # a link's text stays, its target goes
        slug = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        anchor, count = slug, 1
        while anchor in anchors:
            anchor, count = f"{slug}-{count}", count + 1
        anchors.add(anchor)
    return anchors


def broken_links(path: Path, text: str) -> list[str]:
    """Relative links and images in the Markdown ``text`` of ``path`` whose file or heading does not exist."""
    broken = []
    for number, line in _prose_lines(text):
        for match in _LINK.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target} (no such heading)")
    return broken


def _markdown_pages() -> list[Path]:
    return [p for p in _repository_files() if p.suffix == ".md"]


def test_no_work_log_voice_in_the_repository():
    this_file = Path(__file__).resolve()
    findings = []
    for path in _repository_files():
        if path.suffix not in TEXT_SUFFIXES or path.resolve() == this_file:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        findings += [f"{path.relative_to(ROOT)}:{n}: {found!r}: {why}" for n, found, why in voice_findings(text)]
    assert not findings, "work-log phrases in the repository:\n" + "\n".join(findings)


def test_every_relative_link_and_image_resolves():
    broken = [line for page in _markdown_pages() for line in broken_links(page, page.read_text())]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    readme = ROOT / "README.md"
    linked = set()
    for _, line in _prose_lines(readme.read_text()):
        linked |= {(ROOT / m.group(1).partition("#")[0]).resolve() for m in _LINK.finditer(line)}
    pages = [p for p in _markdown_pages() if p.is_relative_to(ROOT / "docs")]
    assert pages, "no pages under docs/"
    missing = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages the README's index does not link: {missing}"


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text))


def test_the_results_table_quotes_its_pages():
    """Each figure in the README's "Results at a glance" row is on the results page that row links."""
    section = (ROOT / "README.md").read_text().partition("## Results at a glance")[2].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "](" in line]
    assert rows, "no 'Results at a glance' table in README.md"
    missing = []
    for row in rows:
        *cells, page_cell = row.strip("|").split("|")
        page = (ROOT / _LINK.search(page_cell).group(1).partition("#")[0]).resolve()
        absent = _numbers(" ".join(cells)) - _numbers(page.read_text())
        missing += [f"{number} (row {cells[0].strip()!r}, page {page.relative_to(ROOT)})" for number in sorted(absent)]
    assert not missing, "README figures not on their results page:\n" + "\n".join(missing)


def test_the_readme_reads_in_one_go():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


# The checks themselves, on made-up text, so that a pass above means something.


@pytest.mark.parametrize(
    "line",
    [
        "The runs were cut short by the 3-hour work sessions that started them.",
        "Issue 5 (reproducing the paper) is partly done.",
        "see issue #12",
        "the issue's seven ablations",
        "Measured on this machine (2 cores)",
        "the run directory was lost with its machine",
        "rerun it in the next session",
        "Both ran slow that hour",
        "an earlier machine and an earlier version of the code",
        "measured on this\nmachine's two cores",
        "# rerun in the next\n# session",
    ],
)
def test_work_log_phrases_are_found(line):
    assert voice_findings(f"fine\n{line}\n")[0][0] == 2


@pytest.mark.parametrize(
    "line",
    [
        "so both can run in the same pytest session",
        "torchrun's workers run in sessions of their own",
        "train.device = 'cuda', but this machine has no CUDA device",
        "an onnxruntime InferenceSession",
        "2 cores of an AVX2-only AMD EPYC (2026-12-01)",
        "the issue tracker",
    ],
)
def test_ordinary_text_is_not_a_work_log(line):
    assert voice_findings(line) == []


def test_link_checking_sees_missing_files_and_headings(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Scene accuracy (synthetic data)\n")
    text = (
        "[ok](docs/page.md#scene-accuracy-synthetic-data) [web](https://example.org/x) ![img](docs/no.png)\n"
        "[bad anchor](docs/page.md#nope) `[not a link](nowhere.md)`\n"
        "```\n[also not](nowhere.md)\n```\n"
    )
    broken = broken_links(tmp_path / "README.md", text)
    assert broken == ["README.md:1: docs/no.png (no such file)", "README.md:2: docs/page.md#nope (no such heading)"]


def test_heading_anchors_follow_github():
    text = "# unitkit\n## Scene accuracy (synthetic data)\n## Preparing data for the paper's other experiments\n"
    text += '## A\n## A\n```\n# a comment, not a heading\n```\n## `[train]`\n### `[data]` kind = "synthetic"\n'
    assert heading_anchors(text) == {
        "unitkit",
        "scene-accuracy-synthetic-data",
        "preparing-data-for-the-papers-other-experiments",
        "a",
        "a-1",
        "train",
        "data-kind--synthetic",
    }
