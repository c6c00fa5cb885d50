"""The README is what `nbs/index.ipynb` renders to, and opens with the two commands a newcomer runs; the docs site
(`make docs`) builds without warnings and gives a reader every notebook, its math, every public name and working links."""
import ast
import functools
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


def test_readme_is_rendered_from_index(repo):
    result = subprocess.run([sys.executable, "tools/render_readme.py", "--check"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_opens_with_the_two_commands(repo):
    readme = (repo / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make report", "make test"]
    assert readme.index("```sh") < readme.index("\n## ")


def test_makefile_targets_and_ci_use_the_readme_commands(repo):
    makefile = (repo / "Makefile").read_text()
    for target in ("report:", "test:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "make test" in (repo / ".ci" / "run").read_text()


# --- the docs site (make docs): built once into a temporary folder, then read as a reader would -------------------
NUMBERED = re.compile(r"^\d\d_\w+\.ipynb$")


@pytest.fixture(scope="module")
def site(repo, tmp_path_factory) -> Path:
    "The docs site as `make docs` builds it (warnings are errors), into a temporary folder."
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                             "-d", str(out / ".doctrees"), "docs", str(out / "html")],
                            cwd=repo, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "html"


class _Page(HTMLParser):
    "The `href`s and `src`s, the element ids and the `class` attributes of an HTML page."
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.classes, self.scripts = [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"): self.ids.add(attrs["id"])
        if attrs.get("class"): self.classes.append((tag, attrs["class"]))
        if tag == "script" and attrs.get("src"): self.scripts.append(attrs["src"])
        for key in ("href", "src"):
            if attrs.get(key): self.links.append(attrs[key])


@functools.cache
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _title(notebook: Path) -> str:
    "The title of a notebook: the text of its first markdown heading."
    first = next(c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "markdown")
    return "".join(first["source"]).splitlines()[0].lstrip("# ").strip()


def test_docs_have_a_page_per_notebook_in_reading_order(repo, site):
    numbered = sorted(p.stem for p in (repo / "nbs").glob("*.ipynb") if NUMBERED.match(p.name))
    assert len(numbered) >= 11
    for stem in numbered + ["errors"]:
        page = site / "nbs" / f"{stem}.html"
        assert page.exists(), stem
        title = _title(repo / "nbs" / f"{stem}.ipynb")
        assert f"<h1>{title}" in page.read_text().replace("’", "'"), (stem, title)
    # the front page is the README, and its navigation lists the notebooks in their numbered order
    index = (site / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", index)
    assert "make report" in text and "make test" in text and "make docs" in text
    positions = [index.index(f'href="nbs/{stem}.html"') for stem in numbered]
    assert positions == sorted(positions)
    for page in ("api.html", "references.html", "example_report.html"):
        assert f'href="{page}"' in index, page


def test_docs_show_the_exported_definitions_on_the_notebook_pages(site):
    "nbdev's show_doc of every exported definition, rendered from the package: here the ELBO notebook's functions."
    page = (site / "nbs" / "05_elbo.html").read_text()
    for name in ("kl_standard_normal", "normal_log_prob", "kl_normal", "elbo_terms", "neg_elbo_marginal", "loss"):
        assert re.search(rf"<h\d[^>]*>{name}<a", page), name
    # in the order of the source: kl_standard_normal is defined before kl_normal
    assert page.index(">kl_standard_normal<a") < page.index(">kl_normal<a")
    assert "#| export" not in page and "show_doc(" not in page
    # a `name` the package exports, in the prose, links to its API entry (as nbdev's add_links does)
    assert 'href="../api/train.html#gmvae_nb.train.fit_module"' in (site / "nbs" / "11_model.html").read_text()


def test_docs_render_the_math_of_the_elbo_page(site):
    path = site / "nbs" / "05_elbo.html"
    page, parsed = path.read_text(), _parse(path)
    assert any("mathjax" in src for src in parsed.scripts), parsed.scripts
    display = [c for tag, c in parsed.classes if tag == "div" and "math" in c.split()]
    inline = [c for tag, c in parsed.classes if tag == "span" and "math" in c.split()]
    assert len(display) >= 5 and len(inline) >= 20, (len(display), len(inline))
    # no $$ block or $…$ left as text: every formula became a math element MathJax typesets
    text = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    assert "$$" not in text and not re.search(r"\$\\", text)
    assert r"\operatorname{logsumexp}" in page


def test_docs_document_every_public_name(repo, site):
    "Every name in the `__all__` of every module of the package has an entry on the API pages."
    ids = set()
    for page in (site / "api").glob("*.html"):
        ids |= _parse(page).ids
    missing, modules = [], 0
    for path in sorted((repo / "gmvae_nb").glob("[!_]*.py")):  # __all__ read from the source: importing takes seconds
        names = [ast.literal_eval(node.value) for node in ast.parse(path.read_text()).body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
        if not names: continue
        modules += 1
        missing += [f"gmvae_nb.{path.stem}.{name}" for name in names[0] if f"gmvae_nb.{path.stem}.{name}" not in ids]
    assert modules >= 11
    assert not missing, missing
    # with the description nbdev's docments comments give the parameters
    elbo = (site / "api" / "elbo.html").read_text()
    assert "(M, B, K) log responsibilities at the samples" in elbo


def test_docs_have_no_broken_internal_links(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    broken = []
    for page in pages:
        for link in _parse(page).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")): continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _parse(target).ids:
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert not broken, broken[:20]


def test_references_link_the_papers_and_tools(site):
    links = set(_parse(site / "references.html").links)
    for url in ("https://arxiv.org/abs/1611.02648", "https://doi.org/10.1038/s41592-018-0229-2",
                "https://doi.org/10.1038/s41592-021-01336-8", "https://github.com/theislab/scib",
                "https://scib-metrics.readthedocs.io", "https://docs.scvi-tools.org"):
        assert url in links, url
