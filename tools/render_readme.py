"""Render `nbs/index.ipynb` to `README.md` without Quarto.

`nbdev-readme` needs Quarto, which cannot be installed everywhere. This does the same job for the
cells an index notebook has: markdown cells as they are, code cells (minus `#|` directives) as
fenced Python with their text outputs, cells marked `#| hide` left out.

    python tools/render_readme.py          # write README.md
    python tools/render_readme.py --check  # exit 1 if README.md is out of date
"""
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _directives(source: str) -> set[str]:
    return {line[3:].strip().split()[0] for line in source.splitlines() if line.startswith("#| ") and line[3:].strip()}


def _code_block(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.startswith("#|")).strip()


def render(notebook: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "The README text for `notebook`."
    parts = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source.strip())
        elif cell.cell_type == "code" and not _directives(cell.source) & {"hide", "include: false"}:
            parts.append(f"```python\n{_code_block(cell.source)}\n```")
            texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
            if any(texts):
                parts.append("    " + "".join(texts).rstrip().replace("\n", "\n    "))
    return "\n\n".join(p for p in parts if p) + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else "README.md is out of date: run python tools/render_readme.py")
    readme.write_text(text)
