"""Sphinx extension: the notebooks of `nbs/` as pages, through nbdev's own processors, without Quarto.

`nbdev-docs` (and `nbdev-proc-nbs`) hand the processed notebooks to Quarto. This feeds them to myst-nb instead:

- nbdev's processors do what they do for Quarto: `#| hide` and `#| export` cells leave the page, a `show_doc` cell
  follows every exported definition, directives and housekeeping magics are stripped.
- The notebooks are not executed (executing them all takes about 13 minutes on 2 cores). Instead of running
  nbdev's `exec_show_docs` (which would execute every cell that holds an import), the `show_doc` cells are rendered
  from the exported package: `show_doc` of the object the notebook exports, as the markdown nbdev would show.
  The committed outputs of the other cells are shown as they are.
- Every public name is also documented by autodoc on the API pages (`autoconstants` adds the constants that
  automodule leaves out); `add_docments` below adds the parameter comments
  of nbdev's docments style (`arg: int,  # what it is`) to those pages as `:param:` fields.
"""
import ast
import importlib
import inspect
import io
import re
import shutil
import tokenize
import warnings
from pathlib import Path

from fastcore.docments import docments
from fastcore.nbio import read_nb, write_nb
from nbdev.process import NBProcessor, Processor
from nbdev.processors import (_default_exp, add_show_docs, ai_magics, clean_magics, filter_stream_, hide_, hide_line,
                              populate_language, rm_export, rm_header_dash, strip_ansi, strip_hidden_metadata)
from nbdev.showdoc import show_doc
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

PACKAGE = "gmvae_nb"
_heading = re.compile(r"^(#{1,6})\s", re.M)
_show_doc_call = re.compile(r"^show_doc\((.+)\)\s*$")


def _resolve(module, name: str):
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _show_doc_markdown(obj, level: int) -> str:
    "nbdev's `show_doc` markdown for `obj`, less its Quarto-only parts (the rule and the source link)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # docments warns where it cannot read a signature's comments
        md = show_doc(obj, title_level=level)._repr_markdown_()
    lines = [line for line in md.splitlines() if line.strip() != "---" and not line.startswith("[source](")]
    return "\n".join(lines).strip()


class show_docs_in_source_order(Processor):
    "`add_show_docs` inserts a cell's `show_doc`s in reverse order (each right after the cell): put them back in order."
    def begin(self):
        cells, i = self.nb.cells, 0
        while i < len(cells):
            j = i
            while j < len(cells) and getattr(cells[j], "has_sd", False): j += 1
            if j > i + 1: cells[i:j] = cells[i:j][::-1]
            i = max(j, i + 1)


class render_show_docs(Processor):
    "Replace the `show_doc(name)` cells that `add_show_docs` inserted by their markdown, one heading level below the section."
    def begin(self):
        exp = self.nb.default_exp_  # read before NBProcessor strips the directives from the sources
        self.module = importlib.import_module(f"{PACKAGE}.{exp}") if exp else None
        self.level = 1

    def cell(self, cell):
        if cell.cell_type == "markdown":
            levels = [len(m.group(1)) for m in _heading.finditer(cell.source)]
            if levels: self.level = levels[-1]
            return
        call = _show_doc_call.match(cell.source.strip()) if cell.cell_type == "code" else None
        if call is None: return
        if self.module is None: raise ValueError(f"show_doc in a notebook without default_exp: {cell.source}")
        md = _show_doc_markdown(_resolve(self.module, call.group(1).strip()), min(self.level + 1, 6))
        cell.cell_type, cell.source, cell.metadata = "markdown", md, {}
        for key in ("outputs", "execution_count"): cell.pop(key, None)


def _public_names() -> dict[str, list[str]]:
    "Each public name of the package (`__all__` of each module, and `Class.method` for their methods) -> its full names."
    import pkgutil
    names = {}
    package = importlib.import_module(PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"): continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        names.setdefault(f"{PACKAGE}.{info.name}", []).append(f"{PACKAGE}.{info.name}")
        for name in getattr(module, "__all__", []):
            names.setdefault(name, []).append(f"{module.__name__}.{name}")
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                for attr in vars(obj):
                    if not attr.startswith("_"): names.setdefault(f"{name}.{attr}", []).append(f"{module.__name__}.{name}.{attr}")
    return names


_code_span = re.compile(r"(?<!`)`([A-Za-z_][\w.]*)(?:\(\))?`(?!`)")
_fence = re.compile(r"^(```|~~~|\$\$)", re.M)


class link_names(Processor):
    "nbdev's `add_links` for this site: a `name` in the prose that the package exports links to its API entry."
    names = None

    def begin(self):
        if link_names.names is None: link_names.names = _public_names()
        self.own = f"{PACKAGE}.{self.nb.default_exp_}." if self.nb.default_exp_ else None

    def _target(self, name):
        full = self.names.get(name, [])
        own = [f for f in full if self.own and f.startswith(self.own)]
        return own[0] if own else full[0] if len(full) == 1 else None

    def _link(self, match):
        target = self._target(match.group(1))
        return f"{{py:obj}}`{match.group(0)[1:-1]} <{target}>`" if target else match.group(0)

    def cell(self, cell):
        if cell.cell_type != "markdown": return
        blocks, inside = [], False  # the text between fences and $$ lines is prose; inside them nothing changes
        for block in re.split(r"(^(?:```|~~~|\$\$).*$)", cell.source, flags=re.M):
            if _fence.match(block):
                inside = not inside if not (block.startswith("$$") and block.rstrip().endswith("$$") and len(block.strip()) > 2) else inside
                blocks.append(block)
            else:
                blocks.append(block if inside else _code_span.sub(self._link, block))
        cell.source = "".join(blocks)


class python_kernelspec(Processor):
    "Name the notebook's language for myst-nb's syntax highlighting (the committed notebooks carry no kernelspec)."
    def begin(self):
        self.nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        self.nb.metadata.setdefault("language_info", {"name": "python"})


# nbdev's FilterDefaults.base_procs, less what only Quarto uses (frontmatter, fenced divs, code folding, links into
# the Quarto site) and with render_show_docs in place of exec_show_docs, link_names in place of add_links;
# show_docs_in_source_order added
PROCS = [populate_language, add_show_docs, show_docs_in_source_order, strip_ansi, hide_line, filter_stream_, rm_header_dash,
         render_show_docs, link_names, rm_export, ai_magics, clean_magics, hide_, strip_hidden_metadata, python_kernelspec]


_CELL_FIELDS = {"code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"},
                "markdown": {"cell_type", "id", "metadata", "source", "attachments"},
                "raw": {"cell_type", "id", "metadata", "source", "attachments"}}


def process_notebook(src: Path, dst: Path) -> None:
    "Write the docs page notebook of `src` to `dst`."
    nb = read_nb(src)
    nb.default_exp_ = _default_exp(nb)
    NBProcessor(nb=nb, procs=PROCS, rm_directives=True).process()
    for cell in nb.cells:  # the processors' bookkeeping (has_sd, ...) is no nbformat field
        for key in set(cell) - _CELL_FIELDS[cell.cell_type]: del cell[key]
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)


def process_notebooks(nbs: Path, out: Path) -> list[Path]:
    "Process every notebook of `nbs` but the index (the README is the site's front page) into `out`, afresh."
    shutil.rmtree(out, ignore_errors=True)
    written = []
    for src in sorted(nbs.glob("*.ipynb")):
        if src.stem == "index": continue
        process_notebook(src, out / src.name)
        written.append(out / src.name)
    return written


def _rst_text(comment: str) -> str:
    "A docments comment (plain text with `code`) as reStructuredText: |, *, \\ and name_ are markup there."
    parts = re.split(r"(`[^`]*`)", comment)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", re.sub(r"([\\|*])", r"\\\1", parts[i]))
    return "".join(parts)


def add_docments(app, what, name, obj, options, lines):
    "autodoc: the docments comments of a function's, method's or class's parameters and return, as fields."
    if what not in ("function", "method", "class"): return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comments = docments(obj, full=False, returns=True)
    except Exception:  # builtins, C extensions, signatures docments cannot read
        return
    comments = {arg: _rst_text(text) if text else text for arg, text in comments.items()}
    fields = [f":param {arg}: {text}" for arg, text in comments.items() if text and arg not in ("self", "return")]
    if comments.get("return"): fields.append(f":returns: {comments['return']}")
    if fields:
        if lines and lines[-1].strip(): lines.append("")
        lines.extend(fields)


def drop_type_docstring(app, what, name, obj, options, lines):
    "autodoc: a constant without a doc comment gets no docstring (not that of its type: `dict() -> new empty dictionary`)."
    if what == "data" and lines and inspect.getdoc(type(obj)) and "\n".join(lines).strip() == inspect.getdoc(type(obj)).strip():
        lines[:] = []


def drop_docs_link(app, what, name, obj, options, lines):
    "autodoc: the exported modules' docstrings end with a link to the Quarto site; this site is that page."
    if what == "module":
        lines[:] = [line for line in lines if not line.startswith("Docs: http")]


def _trailing_comments(module) -> dict[str, str]:
    "The comment at the end of each module-level `NAME = ...` statement of `module`'s source."
    source = inspect.getsource(module)
    comments = {}  # line number -> comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT: comments[tok.start[0]] = tok.string.lstrip("#").strip()

    found = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and node.end_lineno in comments: found[target.id] = comments[node.end_lineno]
    return found


class AutoConstants(SphinxDirective):
    """`.. autoconstants:: module`: `autodata` for each name of the module's `__all__` that is neither a function nor a
    class and has no doc comment (autodoc's automodule leaves those out), described by the comment on its line."""
    required_arguments = 1

    def run(self):
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        documented = {name for (ns, name) in ModuleAnalyzer.for_module(modname).find_attr_docs() if ns == ""}
        comments = _trailing_comments(module)
        lines = []
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj) or name in documented: continue
            lines.append(f".. autodata:: {modname}.{name}")
            if len(repr(obj)) > 120: lines.append("   :no-value:")
            lines += ["", f"   {_rst_text(comments[name])}" if name in comments else "", ""]
        return self.parse_text_to_nodes("\n".join(lines))


def _process(app, config):
    root = Path(app.confdir).parent
    process_notebooks(root / "nbs", Path(app.confdir) / "nbs")


def setup(app):
    app.add_directive("autoconstants", AutoConstants)
    app.connect("config-inited", _process)
    app.connect("autodoc-process-docstring", add_docments)
    app.connect("autodoc-process-docstring", drop_docs_link)
    app.connect("autodoc-process-docstring", drop_type_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
