"""Every Python example in README.md and docs/*.md runs as written; CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE_BLOCKS = {page: re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S) for page in PAGES}


def test_docs_have_examples() -> None:
    pages_with_examples = {page.name for page, blocks in PAGE_BLOCKS.items() if blocks}
    assert {"README.md", "concepts.md", "tracing.md", "templatize.md", "testing.md", "grow.md"} <= pages_with_examples


@pytest.mark.parametrize("page", [p for p in PAGES if PAGE_BLOCKS[p]], ids=lambda p: p.name)
def test_examples_run_in_page_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's blocks run top to bottom in one namespace (a tutorial builds on its earlier steps), in a temporary
    working directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(PAGE_BLOCKS[page]):
        exec(compile(code, f"<{page.name} block {i}>", "exec"), namespace)


def test_ci_runs_exactly_the_second_quick_start_command() -> None:
    quick = re.search(r"## Quick start\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert quick is not None
    commands = [line for line in quick.group(1).splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == commands[1]
    assert "set -euo pipefail" in ci
