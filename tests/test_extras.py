"""What `pip install gmvae-nb` without extras can do: load, train, embed and save with every package that only an
extra brings missing; the modules that need an extra say which one to install."""
import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from packaging.requirements import Requirement


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(requirements: list[Requirement], extras: tuple[str, ...] = ()) -> set[str]:
    "The distributions `requirements` (those whose marker holds with `extras`) need, with everything they need in turn."
    needed, todo = set(), list(requirements)
    while todo:
        requirement = todo.pop()
        name = _normal(requirement.name)
        holds = requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras or ("",))
        if not holds or name in needed or name == "gmvae-nb": continue
        needed.add(name)
        try: todo += [Requirement(r) for r in requires(name) or []]
        except PackageNotFoundError: pass  # an optional requirement of a dependency that is not installed
    return needed


def modules_of_extras_only() -> set[str]:
    "Top-level modules that only distributions an extra of gmvae-nb brings (and not its core, or what the core needs) provide."
    declared = [Requirement(r) for r in requires("gmvae-nb")]
    extras = tuple(sorted({e for r in declared if r.marker is not None
                           for e in re.findall(r'extra == "([^"]+)"', str(r.marker))}))
    optional = requirement_closure(declared, extras) - requirement_closure(declared)
    return {module for module, dists in packages_distributions().items() if {_normal(d) for d in dists} <= optional}


SCRIPT = """
import importlib, json, sys
BLOCKED = json.loads(sys.argv[1])
# scipy asks `"sphinx" in sys.modules` (to know whether Sphinx is running) and then imports it: those are blocked
# by a finder instead, which leaves them out of sys.modules as an absent package would
PROBED = {"sphinx"} & set(BLOCKED)

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in PROBED: raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
sys.modules.update(dict.fromkeys(set(BLOCKED) - PROBED))  # None: importing one raises ModuleNotFoundError, find_spec finds none

import anndata as ad
from gmvae_nb import GMVAE
from gmvae_nb.data import load_counts, select_genes, split, write_h5ad
from gmvae_nb.simulate import simulate

out = sys.argv[2]
adata = split(load_counts(simulate("default", n_cells=200, n_genes=30, n_types=3, n_batches=2, seed=0)))
model = GMVAE(adata, n_clusters=3).fit(max_epochs=1, init_mixture="gmm", init_epochs=1, progress=False)
model.get_latent()
model.predict()
model.save(f"{out}/model")
write_h5ad(adata, f"{out}/adata.h5ad")
GMVAE.load(f"{out}/model", ad.read_h5ad(f"{out}/adata.h5ad"), device="cpu")

errors = {}
for module in ("gmvae_nb.metrics", "gmvae_nb.sweep", "gmvae_nb.report"):
    try: importlib.import_module(module)
    except ModuleNotFoundError as e: errors[module] = str(e)
try: select_genes(adata, n_top_genes=10)
except ModuleNotFoundError as e: errors["select_genes"] = str(e)
print(json.dumps({"errors": errors, "loaded": sorted(m for m, module in sys.modules.items()
                                                    if module is not None and m.partition(".")[0] in BLOCKED)}))
"""


def test_core_trains_and_embeds_without_the_extras(tmp_path):
    blocked = modules_of_extras_only()
    assert {"papermill", "nbconvert", "matplotlib", "scanpy", "scib_metrics", "dask", "jax"} <= blocked
    assert not {"sklearn", "threadpoolctl", "torch"} & blocked  # core: fit(init_mixture="gmm") uses scikit-learn
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(sorted(blocked)), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == []
    assert (tmp_path / "adata.h5ad").is_file() and (tmp_path / "model" / "model.pt").is_file()
    for where, extra in [("gmvae_nb.metrics", "metrics"), ("gmvae_nb.sweep", "sweep"), ("gmvae_nb.report", "report"),
                         ("select_genes", "hvg")]:
        assert f'pip install "gmvae-nb[{extra}]"' in report["errors"][where], report["errors"]
