"""The docs hold together: relative links resolve, every CLI command is in docs/CLI.md, README stays a short page.

Pure file reads and one import of the click group; no subprocesses.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" may follow)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(`{3,}|~{3,})")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line.lstrip())
        if fence is None and m:
            fence = m.group(1)[0] * 3
            continue
        if fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            continue
        lines.append(line)
    return re.sub(r"`[^`\n]*`", "", "\n".join(lines))


def relative_links(text: str) -> list[str]:
    """Relative link targets of a Markdown text, without their #fragment; web, mail and pure #anchor links left out."""
    out = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"(?i)^(https?:|mailto:|#)", target):
            continue
        path = target.split("#", 1)[0]
        if path:
            out.append(path)
    return out


def test_link_parser():
    text = (
        "See [a](docs/a.md#x), ![pic](b.png), [web](https://x.org/y), [m](mailto:a@b.c), [anchor](#top),\n"
        '[t](c.md "title") and `[not](code.md)`.\n```\n[nor](fenced.md)\n```\n'
    )
    assert relative_links(text) == ["docs/a.md", "b.png", "c.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def _command_names(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        names.append(full)
        if isinstance(cmd, click.Group):
            names += _command_names(cmd, f"{full} ")
    return names


def test_every_cli_command_is_in_the_cli_reference():
    from stbava.cli import main  # the root group of [project.scripts] stbava = "stbava.cli:main"

    names = _command_names(main)
    assert names, "the stbava group has no commands"
    cli_md = (ROOT / "docs" / "CLI.md").read_text()
    headings = {ln.lstrip("#").strip() for ln in cli_md.splitlines() if ln.startswith("#")}
    missing = [n for n in names if f"stbava {n}" not in cli_md and n not in headings and f"stbava {n}" not in headings]
    assert not missing, f"commands missing from docs/CLI.md (run: python -m stbava.docs > docs/CLI.md): {missing}"


def test_readme_is_short_and_has_no_issue_numbers():
    text = (ROOT / "README.md").read_text()
    n = len(text.splitlines())
    assert n <= 300, f"README.md has {n} lines; move detail into docs/"
    assert not re.search(r"[Ii]ssue #", text), "README.md mentions an issue number"
