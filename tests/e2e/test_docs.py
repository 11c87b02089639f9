"""The front door and the docs: every relative link resolves (file and #anchor, with GitHub's
heading slugs), the README stays a front door, the shipped bootstraps carry the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The page without its code blocks (a `#` there is a comment, not a heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _prose(page.read_text()), re.M)}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(page.read_text()))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_slugs_follow_github() -> None:
    assert slug("Wasm or native?") == "wasm-or-native"
    assert slug("Pooled mode: behind redis_proxy") == "pooled-mode-behind-redis_proxy"
    assert slug("Performance (`make bench`)") == "performance-make-bench"
    assert slug("3. Watch the stats") == "3-watch-the-stats"


def test_the_readme_is_a_front_door() -> None:
    text = (REPO / "README.md").read_text()
    head = "\n".join(text.splitlines()[:8])
    assert "make demo" in head and "make test" in head, "the two commands open the README"
    assert len(text.splitlines()) <= 220, "deep dives belong in docs/"
    for section in ("## Use it", "## Configuration", "## Metrics", "## Wasm or native?",
                    "## Compatibility"):
        assert section in text, section


def test_the_shipped_bootstraps_carry_the_defaults() -> None:
    """(The README's table against the code: src/config.rs, `cargo test`.)"""
    for shipped in ("envoy/envoy.yaml", "envoy/native.yaml"):
        assert ('"keepalive_interval":"15s","ping_timeout":"5s","probe_after":"25s"'
                in (REPO / shipped).read_text()), shipped
