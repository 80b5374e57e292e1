"""The user's guide stays short, and its links and the reference pages' links lead somewhere."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_BYTES = 25_000

# [text](target) or [text](target "title"); images too. Code is left out first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _relative_links(text: str) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    links = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http(s), mailto, ...
            continue
        path = target.split("#", 1)[0]
        if path:  # a bare #anchor points into the same file
            links.append(path)
    return links


def test_readme_is_at_most_25_kb():
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_relative_links_point_at_files_that_exist():
    files = _markdown_files()
    assert len(files) > 1, "docs/*.md is expected beside the README"
    broken = [
        f"{md.relative_to(REPO)}: {link}"
        for md in files
        for link in _relative_links(md.read_text(encoding="utf-8"))
        if not (md.parent / link).exists()
    ]
    assert not broken, "links to missing files:\n" + "\n".join(broken)
