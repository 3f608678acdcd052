"""The documentation's links: README.md and docs/*.md.

Relative links must name a file of the repository; a ``#anchor`` (on the same
page or ``page.md#anchor``) must match a heading of the target page, slugged
as GitHub does. External http(s) links are checked for form only (no network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 250

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), the target optionally in <>, optionally followed by a "title"
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)]*?)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HOST = re.compile(r"^(localhost|\d{1,3}(\.\d{1,3}){3}|([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,})(:\d{1,5})?$", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page}:{self.line}: ({self.target})"


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, numbered from 1."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation dropped except '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub makes for the page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(page: Path) -> list[Link]:
    """Every link target of the page outside code: inline links and images, autolinks, reference definitions."""
    found: list[Link] = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        text = CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(text)] + [m.group(1) for m in AUTOLINK.finditer(text)]
        reference = REFERENCE_DEF.match(text)
        if reference:
            targets.append(reference.group(1))
        found.extend(Link(page, number, target) for target in targets)
    return found


def check_external(link: Link) -> str | None:
    parts = urlsplit(link.target)
    if parts.scheme not in ("http", "https"):
        return f"{link.where()}: only http and https links are allowed outside the repository"
    if not HOST.match(parts.netloc) or any(c.isspace() for c in link.target):
        return f"{link.where()}: not a well-formed URL"
    return None


def check_link(link: Link, root: Path = ROOT) -> str | None:
    """None if the link holds, else what is wrong with it."""
    target = link.target
    if not target:
        return f"{link.where()}: empty link"
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return check_external(link)
    path_part, _, anchor = target.partition("#")
    if path_part:
        if path_part.startswith("/"):
            return f"{link.where()}: use a path relative to the page, not an absolute one"
        dest = (link.page.parent / unquote(path_part)).resolve()
        if not dest.is_relative_to(root.resolve()):
            return f"{link.where()}: points outside the repository"
        if not dest.exists():
            return f"{link.where()}: no such file {dest.relative_to(root.resolve())}"
    else:
        dest = link.page
    if anchor and dest.suffix == ".md":
        if dest.is_dir():
            return f"{link.where()}: an anchor into a folder"
        if unquote(anchor) not in anchors(dest):
            return f"{link.where()}: no heading with the anchor #{anchor} in {dest.name}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    problems = [problem for link in links(page) if (problem := check_link(link)) is not None]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / link.target.partition("#")[0]).resolve() for link in links(README) if link.target.startswith("docs/")}
    missing = [page.name for page in PAGES if page != README and page.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


# The checker itself: each kind of broken link must be caught.


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Delivery guarantees: exactly-once\n\n## Tests\n\n## Tests\n", encoding="utf-8"
    )
    (tmp_path / "docs" / "picture.png").write_bytes(b"")
    return tmp_path


def problems_in(repo: Path, markdown: str) -> list[str]:
    page = repo / "README.md"
    page.write_text(markdown, encoding="utf-8")
    return [problem for link in links(page) if (problem := check_link(link, repo)) is not None]


@pytest.mark.parametrize(
    "markdown",
    [
        "[ok](docs/page.md)",
        "[ok](docs/page.md#delivery-guarantees-exactly-once)",
        "[second of two](docs/page.md#tests-1)",
        "![picture](docs/picture.png)",
        "# Here\n\n[same page](#here)",
        "[web](https://github.com/dpkp/kafka-python) and <http://localhost:9000>",
        "```\n[not a link](nowhere.md)\n```",
        "`[not a link](nowhere.md)`",
    ],
)
def test_checker_accepts(repo: Path, markdown: str) -> None:
    assert problems_in(repo, markdown) == []


@pytest.mark.parametrize(
    ("markdown", "complaint"),
    [
        ("[gone](docs/missing.md)", "no such file"),
        ("[gone](docs/page.md#no-such-heading)", "no heading"),
        ("[old anchor](#security-tls-sasl-and-acls)", "no heading"),
        ("[third](docs/page.md#tests-2)", "no heading"),
        ("[outside](../elsewhere.md)", "outside the repository"),
        ("[absolute](/docs/page.md)", "relative"),
        ("[bad url](https://exa mple.com)", "well-formed"),
        ("[no host](https://)", "well-formed"),
        ("[scheme](ftp://example.com/x)", "only http"),
        ("[empty]()", "empty link"),
    ],
)
def test_checker_refuses(repo: Path, markdown: str, complaint: str) -> None:
    problems = problems_in(repo, markdown)
    assert len(problems) == 1
    assert complaint in problems[0]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Security: TLS, SASL and ACLs", "security-tls-sasl-and-acls"),
        ("Two engines: kafka-python or confluent-kafka", "two-engines-kafka-python-or-confluent-kafka"),
        ("The `fraud_rules` topic", "the-fraud_rules-topic"),
        ("Scenarios and backtest", "scenarios-and-backtest"),
        ("Layers (target layout)", "layers-target-layout"),
    ],
)
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
