"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which cannot be installed offline).

Markdown cells are copied as they are; code cells not marked `#| hide` become python blocks with their text output.
`--check` exits 1 when README.md differs from what the notebook gives.
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = ["<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip()
        if cell["cell_type"] == "markdown":
            parts.append(src)
        elif cell["cell_type"] == "code" and src and not src.startswith("#| hide"):
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
            parts.append(f"```python\n{code}\n```")
            text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            if text.strip(): parts.append(f"```\n{text.rstrip()}\n```")
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    want, readme = render(root / "nbs" / "index.ipynb"), root / "README.md"
    if "--check" in sys.argv:
        ok = readme.exists() and readme.read_text() == want
        print("README.md is up to date" if ok else "README.md differs from nbs/index.ipynb")
        sys.exit(0 if ok else 1)
    readme.write_text(want)
    print(f"wrote {readme}")
