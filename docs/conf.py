"""Sphinx configuration of the docs site: `make docs` builds it into `docs/_build/html/` (see README)."""
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

import gmvae_nb  # noqa: E402

project = "gmvae-nb"
author = "gmvae_nb developers"
release = version = gmvae_nb.__version__
copyright = "gmvae_nb developers"

extensions = [
    "myst_nb",  # the notebooks (and markdown pages), with myst-parser
    "sphinx.ext.autodoc",  # the API pages, from the exported package's docstrings and signatures
    "sphinx.ext.mathjax",
    "nbdocs",  # docs/_ext/nbdocs.py: nbs/*.ipynb through nbdev's processors into docs/nbs/
]

# the notebooks are shown with their committed outputs, not executed (all of them take ~13 minutes on 2 cores)
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# docstrings are nbdev's (markdown-ish): `name` is code, as in markdown
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True}

# the main job's report, where one was rendered in this checkout (`make report`)
REPORT = ROOT / "reports" / "default" / "report.html"
if REPORT.exists():
    html_extra_path = [str(REPORT)]
    tags.add("report")  # noqa: F821 (Sphinx provides `tags`)

html_theme = "furo"
html_title = f"gmvae-nb {release}"
html_static_path = []
