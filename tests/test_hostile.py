"""Hostile input. Every row of the bad-input table in `nbs/errors.ipynb` is a test here: `CASES` maps the row's id
to a function that builds that input and hands it to the API; the test asserts the table's error type and that the
message contains the table's excerpt, and the table's ids and `CASES` must be the same set, so neither can drift.
Then numerically hostile but valid data (huge cells, a huge count, all-zero genes, a one-cell batch) must train
without NaN, and reordered genes must work."""
import builtins
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from gmvae_nb.baselines import pca_baseline, scvi_baseline
from gmvae_nb.data import load_counts, read_gene_counts, write_annotated, write_h5ad
from gmvae_nb.metrics import evaluate
from gmvae_nb.model import FORMAT_VERSION, GMVAE
from gmvae_nb.report import render_report
from gmvae_nb.simulate import simulate
from gmvae_nb.sweep import collect, prepare_data, sweep

ERRORS_NOTEBOOK = Path(__file__).resolve().parents[1] / "nbs" / "errors.ipynb"
TINY = dict(n_x=4, n_w=3, encoder_hidden=(16,), decoder_hidden=(16,), beta_hidden=(8,))  # builds and runs in ms
ROW = re.compile(r"^\| `([^`]+)` \| (.+?) \| `(\w+)` \| `([^`]+)` \|$")


def table_rows() -> dict[str, tuple[str, str]]:
    "The bad-input table of `nbs/errors.ipynb`: row id -> (error type name, message excerpt)."
    cells = json.loads(ERRORS_NOTEBOOK.read_text())["cells"]
    lines = [line.rstrip("\n") for cell in cells if cell["cell_type"] == "markdown" for line in cell["source"]]
    rows = [ROW.match(line) for line in lines if line.startswith("| `")]
    assert all(rows), "every table row reads | `id` | input | `Error` | `excerpt` |"
    ids = [row.group(1) for row in rows]
    assert len(ids) == len(set(ids)), f"repeated ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    return {row.group(1): (row.group(3), row.group(4)) for row in rows}


# --- the inputs -----------------------------------------------------------------------------------------

def toy(counts: np.ndarray | None = None) -> ad.AnnData:
    "12 cells × 8 genes of raw counts in `layers['counts']` (and `X`), two batches, cell types."
    if counts is None:
        counts = np.random.default_rng(0).poisson(3, size=(12, 8)).astype(np.float32)
        counts[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"batch": pd.Categorical(["b0", "b1"] * 6), "cell_type": ["B", "T", "NK"] * 4},
                       index=[f"cell{i}" for i in range(12)])
    matrix = sp.csr_matrix(counts)
    return ad.AnnData(X=matrix.copy(), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(8)]),
                      layers={"counts": matrix})


def with_values(value, dtype=np.float32) -> ad.AnnData:
    "`toy()` with `value` at cells 1 and 4 of gene g2, in `dtype`."
    counts = toy().layers["counts"].toarray().astype(dtype)
    counts[[1, 4], 2] = value
    return toy(counts)


def in_x(values: np.ndarray) -> ad.AnnData:
    "`toy()`'s cells and genes with `values` (any dtype) as a dense X and no layers."
    return ad.AnnData(X=values, obs=toy().obs, var=toy().var)


def with_empty_cells(cells) -> ad.AnnData:
    "`toy()` with no counts in `cells`."
    counts = toy().layers["counts"].toarray()
    counts[cells] = 0
    return toy(counts)


def model() -> GMVAE:
    "An (untrained) tiny model of `toy()`."
    return GMVAE(toy(), n_clusters=2, seed=0, **TINY)


def trained() -> GMVAE:
    "A tiny model of `toy()` trained for one epoch."
    return model().fit(max_epochs=1, n_init=1, split_key=None, progress=False)


def saved(folder: Path) -> Path:
    "A tiny model of `toy()` saved in `folder / 'model'`."
    return model().save(folder / "model")


def h5ad(folder: Path, adata: ad.AnnData | None = None) -> Path:
    "`adata` (default `toy()`) written to `folder / 'data.h5ad'`."
    return write_h5ad(toy() if adata is None else adata, folder / "data.h5ad")


def damaged(folder: Path, keep: Callable[[bytes], bytes]) -> Path:
    "A copy of the h5ad of `toy()` whose bytes are `keep(bytes)`."
    path = folder / "damaged.h5ad"
    path.write_bytes(keep(h5ad(folder).read_bytes()))
    return path


def newer_format(folder: Path) -> Path:
    "A saved model whose config claims the next format version."
    config = saved(folder) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format_version": FORMAT_VERSION + 1}))
    return config.parent


def unseen_batch() -> ad.AnnData:
    other = toy()
    other.obs["batch"] = other.obs["batch"].cat.rename_categories({"b1": "b9"})
    return other


def named_by_id() -> ad.AnnData:
    "`toy()` as CELLxGENE names its genes: Ensembl-like IDs as var names, the symbols in `var['feature_name']`."
    adata = toy()
    adata.var["feature_name"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    return adata


def two_batch_columns() -> ad.AnnData:
    "`toy()` with a second obs column named 'batch', as renaming a column to a name another has leaves it."
    adata = toy()
    adata.obs = adata.obs.assign(batch2=adata.obs["batch"]).rename(columns={"batch2": "batch"})
    return adata


def counts_in_raw(layers: bool = False) -> ad.AnnData:
    "`toy()` as scanpy leaves it after `adata.raw = adata` and normalisation: the counts in `raw`, X log-normalised; the counts layer kept if `layers`."
    adata = toy()
    adata.raw = adata
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray() / adata.X.sum(1).A * 1e4))
    if layers: adata.layers["counts"] = adata.X.copy()
    else: del adata.layers["counts"]
    return adata


def one_tissue() -> ad.AnnData:
    "`toy()` with an obs column of a single value."
    adata = toy()
    adata.obs["tissue"] = "marrow"
    return adata


def missing_batches() -> ad.AnnData:
    adata = toy()
    adata.obs.loc[["cell3", "cell7"], "batch"] = np.nan
    return adata


def duplicate_genes() -> ad.AnnData:
    adata = toy()
    adata.var_names = ["g0", "g1", "g1"] + [f"g{j}" for j in range(3, 8)]
    return adata


def backed(folder: Path, adata: ad.AnnData) -> ad.AnnData:
    "`adata` written to an h5ad and opened backed (its X stays on disk)."
    return ad.read_h5ad(h5ad(folder, adata), backed="r")


def no_train_cells() -> GMVAE:
    adata = toy()
    adata.obs["split"] = "test"
    return GMVAE(adata, n_clusters=2, **TINY)


def unlabelled(adata: ad.AnnData) -> ad.AnnData:
    "`adata` without the cell types of cell3 and cell7."
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.loc[["cell3", "cell7"], "cell_type"] = np.nan
    return adata


def embedded(n_cells: int = 40, cell_types=("B", "T"), non_finite_cells=()) -> ad.AnnData:
    "`n_cells` cells of two batches and `cell_types` in turn, with a 3-dimensional embedding in `obsm['X_gmvae']`, NaN in `non_finite_cells`."
    coordinates = np.random.default_rng(0).normal(size=(n_cells, 3)).astype(np.float32)
    coordinates[list(non_finite_cells)] = np.nan
    obs = pd.DataFrame({"batch": ["b0", "b1"] * (n_cells // 2), "cell_type": [cell_types[i % len(cell_types)] for i in range(n_cells)]},
                       index=[f"cell{i}" for i in range(n_cells)])
    return ad.AnnData(obs=obs, obsm={"X_gmvae": coordinates})


def sweepable(folder: Path) -> Path:
    "An h5ad of 200 simulated cells × 30 genes, enough for a sweep's test split of 10% to be scored."
    return h5ad(folder, simulate("default", n_cells=200, n_genes=30, n_types=3, n_batches=2, seed=0))


def prepared_with_a_tenth(folder: Path) -> Path:
    "A sweep folder whose data were prepared with test_fraction=0.1."
    prepare_data(sweepable(folder), folder / "sweep", test_fraction=0.1)
    return folder / "sweep"


CASES: dict[str, Callable[[Path], object]] = {
    "non-integer-counts": lambda tmp: GMVAE(with_values(1.5)),
    "log-normalised-counts": lambda tmp: GMVAE(toy(np.log1p(toy().layers["counts"].toarray()))),
    "negative-counts": lambda tmp: GMVAE(with_values(-1)),
    "nan-counts": lambda tmp: GMVAE(with_values(np.nan)),
    "infinite-counts": lambda tmp: GMVAE(with_values(np.inf)),
    "counts-above-2**24": lambda tmp: GMVAE(with_values(2**25, np.int64)),
    "nan-counts-backed": lambda tmp: GMVAE(backed(tmp, with_values(np.nan)), layer=None),
    "nan-counts-in-file": lambda tmp: load_counts(h5ad(tmp, with_values(np.nan))),
    "boolean-dtype": lambda tmp: GMVAE(in_x(toy().layers["counts"].toarray() > 0), layer=None),
    "complex-dtype": lambda tmp: GMVAE(in_x(toy().layers["counts"].toarray().astype(complex)), layer=None),
    "string-dtype": lambda tmp: GMVAE(in_x(toy().layers["counts"].toarray().astype(str).astype(object)), layer=None),
    "some-empty-cells": lambda tmp: GMVAE(with_empty_cells([2, 5]), **TINY),
    "all-cells-empty": lambda tmp: GMVAE(with_empty_cells(slice(None))),
    "empty-cells-dropped": lambda tmp: load_counts(with_empty_cells([2, 5])),
    "empty-cells-refused": lambda tmp: load_counts(with_empty_cells([2, 5]), empty_cells="error"),
    "no-cells": lambda tmp: GMVAE(toy()[:0].copy()),
    "not-anndata": lambda tmp: GMVAE(str(h5ad(tmp))),
    "missing-layer": lambda tmp: GMVAE(toy(), layer="raw"),
    "missing-layer-in-file": lambda tmp: load_counts(h5ad(tmp), layer="raw"),
    "counts-only-in-raw": lambda tmp: GMVAE(counts_in_raw()),
    "counts-only-in-raw-in-file": lambda tmp: load_counts(h5ad(tmp, counts_in_raw())),
    "log-normalised-x-with-raw": lambda tmp: GMVAE(counts_in_raw(), layer=None),
    "missing-model-layer": lambda tmp: model().predict(counts_in_raw()),
    "log-normalised-model-layer": lambda tmp: model().get_latent(counts_in_raw(layers=True)),
    "missing-batch-key": lambda tmp: GMVAE(toy(), batch_key="donor"),
    "missing-batch-key-in-file": lambda tmp: load_counts(h5ad(tmp), batch_key="donor"),
    "duplicate-batch-column": lambda tmp: GMVAE(two_batch_columns(), **TINY),
    "missing-label-key": lambda tmp: load_counts(toy(), label_key="celltype"),
    "missing-batch-values": lambda tmp: GMVAE(missing_batches()),
    "duplicate-genes": lambda tmp: GMVAE(duplicate_genes()),
    "n-clusters-below-1": lambda tmp: GMVAE(toy(), n_clusters=0),
    "unseen-batch": lambda tmp: model().get_latent(unseen_batch()),
    "unseen-batch-decoded": lambda tmp: model().elbo_terms(unseen_batch()),
    "mapped-batch-decoded": lambda tmp: trained().map_query(unseen_batch()).elbo_terms(unseen_batch()),
    "unseen-batch-at-load": lambda tmp: GMVAE.load(GMVAE(toy(), n_clusters=2, encode_batch=True, **TINY).save(tmp / "model"),
                                                   unseen_batch()),
    "map-query-encoder-takes-batch": lambda tmp: GMVAE(toy(), n_clusters=2, encode_batch=True, **TINY).map_query(unseen_batch()),
    "map-query-untrained": lambda tmp: model().map_query(unseen_batch()),
    "map-query-no-new-batch": lambda tmp: trained().map_query(toy()),
    "unknown-transform-batch": lambda tmp: model().get_normalized_expression(transform_batch="b9"),
    "unknown-genes-in-gene-list": lambda tmp: model().get_normalized_expression(gene_list=["g3", "CD3E", "MS4A1"]),
    "negative-n-samples-for-expression": lambda tmp: model().get_normalized_expression(n_samples=-1),
    "bad-library-size": lambda tmp: model().get_normalized_expression(library_size="observed"),
    "missing-groupby-column": lambda tmp: model().differential_expression(groupby="leiden"),
    "unknown-group": lambda tmp: model().differential_expression(groupby="cell_type", group1="DC"),
    "a-single-group": lambda tmp: model().differential_expression(one_tissue(), groupby="tissue"),
    "missing-genes": lambda tmp: model().get_latent(toy()[:, 1:].copy()),
    "missing-genes-at-load": lambda tmp: GMVAE.load(saved(tmp), toy()[:, 1:].copy()),
    "genes-in-a-var-column": lambda tmp: GMVAE.load(saved(tmp), named_by_id()),
    "no-train-cells": lambda tmp: no_train_cells().fit(max_epochs=1, progress=False),
    "missing-file": lambda tmp: load_counts(tmp / "nope.h5ad"),
    "truncated-h5ad": lambda tmp: load_counts(damaged(tmp, lambda data: data[: len(data) // 2])),
    "damaged-h5ad": lambda tmp: load_counts(damaged(tmp, lambda data: data[:-2000] + bytes(2000))),
    "not-hdf5": lambda tmp: load_counts(damaged(tmp, lambda data: b"cell,g0,g1\ncell0,1,2\n")),
    "hdf5-not-h5ad": lambda tmp: load_counts(plain_hdf5(tmp)),
    "annotations-of-other-cells": lambda tmp: write_annotated(read_gene_counts(h5ad(tmp), ["g0"])[::2], tmp / "data.h5ad", tmp / "out.h5ad"),
    "newer-format-version": lambda tmp: GMVAE.load(newer_format(tmp), toy()),
    "no-saved-model": lambda tmp: GMVAE.load(tmp, toy()),
    "saved-models-below": lambda tmp: GMVAE.load(saved(tmp / "run").parents[1], toy()),
    "missing-model-layer-at-load": lambda tmp: GMVAE.load(saved(tmp), counts_in_raw()),
    "save-over-a-model": lambda tmp: model().save(saved(tmp)),
    "missing-embedding": lambda tmp: evaluate(embedded(), embedding="X_scVI"),
    "non-finite-embedding": lambda tmp: evaluate(embedded(non_finite_cells=[2, 5])),
    "missing-label-column-to-score": lambda tmp: evaluate(embedded(), label_key="celltype"),
    "unlabelled-cells-to-score": lambda tmp: evaluate(unlabelled(embedded())),
    "one-cell-type-to-score": lambda tmp: evaluate(embedded(cell_types=("B",))),
    "too-few-cells-to-score": lambda tmp: evaluate(embedded(n_cells=12)),
    "pca-components-above-cells-or-genes": lambda tmp: pca_baseline(toy()),
    "train-cells-not-boolean": lambda tmp: scvi_baseline(toy(), train_cells=np.arange(12)),
    "train-cells-wrong-length": lambda tmp: scvi_baseline(toy(), train_cells=np.ones(10, dtype=bool)),
    "train-cells-none": lambda tmp: scvi_baseline(toy(), train_cells=np.zeros(12, dtype=bool)),
    "train-cells-without-a-batch": lambda tmp: scvi_baseline(toy(), train_cells=(toy().obs["batch"] == "b0").to_numpy()),
    "k-below-1": lambda tmp: sweep(h5ad(tmp), Ks=[0, 10], out=tmp / "sweep"),
    "repeated-k": lambda tmp: sweep(h5ad(tmp), Ks=[10, 10], out=tmp / "sweep"),
    "repeats-below-1": lambda tmp: sweep(h5ad(tmp), repeats=0, out=tmp / "sweep"),
    "workers-below-1": lambda tmp: sweep(h5ad(tmp), workers=0, out=tmp / "sweep"),
    "test-fraction-above-half": lambda tmp: sweep(h5ad(tmp), test_fraction=0.6, out=tmp / "sweep"),
    "test-split-too-small": lambda tmp: sweep(h5ad(tmp), out=tmp / "sweep"),
    "unlabelled-cells-in-sweep": lambda tmp: sweep(h5ad(tmp, unlabelled(toy())), out=tmp / "sweep"),
    "sweep-folder-prepared-otherwise": lambda tmp: sweep(sweepable(tmp), test_fraction=0.2, out=prepared_with_a_tenth(tmp)),
    "no-finished-runs": lambda tmp: collect(tmp),
    "report-of-no-runs": lambda tmp: render_report(tmp),
    "unknown-renderer": lambda tmp: render_report(tmp, renderer="pdf"),
}


def plain_hdf5(folder: Path) -> Path:
    "An HDF5 file holding a matrix but no AnnData."
    path = folder / "plain.h5ad"
    with h5py.File(path, "w") as file:
        file["X"] = np.eye(2)
    return path


# --- the table is the tests -----------------------------------------------------------------------------

def test_every_table_row_has_a_case_and_every_case_a_row():
    rows = table_rows()
    assert len(rows) >= 30
    assert set(rows) == set(CASES), (f"rows without a case: {sorted(set(rows) - set(CASES))}; "
                                     f"cases without a row: {sorted(set(CASES) - set(rows))}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_the_error_of_the_table(case, tmp_path):
    error_name, excerpt = table_rows()[case]
    expected = getattr(builtins, error_name)
    if issubclass(expected, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CASES[case](tmp_path)
        messages = [str(w.message) for w in caught if type(w.message) is expected]
        assert any(excerpt in message for message in messages), (excerpt, [str(w.message) for w in caught])
        return
    with pytest.raises(Exception) as raised:
        CASES[case](tmp_path)
    assert type(raised.value) is expected, f"{case}: {type(raised.value).__name__}: {raised.value}"
    message = raised.value.args[0]
    assert excerpt in message, f"{case}: {excerpt!r} not in {message!r}"


# --- numerically hostile but valid data -----------------------------------------------------------------

def hostile_but_valid() -> ad.AnnData:
    "200 simulated cells × 100 genes with two cells of 10⁶ UMIs, a count of 10⁵ in one cell, 3 all-zero genes and a batch of one cell."
    adata = simulate("default", n_cells=200, n_genes=100, n_types=3, n_batches=2, seed=0, n_jobs=1)
    counts = adata.layers["counts"].toarray()
    counts[:, [7, 8, 9]] = 0
    counts[[0, 3], 10:] = 12_000  # 1.08 · 10⁶ UMIs
    counts[1, 5] = 100_000
    obs = adata.obs[["batch", "cell_type"]].copy()
    obs["batch"] = obs["batch"].cat.add_categories("alone")
    obs.iloc[2, obs.columns.get_loc("batch")] = "alone"
    matrix = sp.csr_matrix(counts)
    return ad.AnnData(X=matrix.copy(), obs=obs, var=adata.var[[]].copy(), layers={"counts": matrix})


def assert_finite_outputs(fitted: GMVAE, adata: ad.AnnData):
    "The training history and every per-cell output of `fitted` on `adata` are finite."
    history = fitted.history.select_dtypes("number").to_numpy()
    assert history.size and np.isfinite(history).all(), fitted.history
    assert np.isfinite(fitted.get_latent(adata)).all() and np.isfinite(adata.obsm["X_gmvae_w"]).all()
    proba = fitted.predict_proba(adata, n_samples=2)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-4)
    assert np.isfinite(fitted.elbo_terms(adata, n_samples=2).to_numpy()).all()
    assert all(np.isfinite(p.detach()).all() for p in fitted.module.parameters())


@pytest.mark.parametrize("settings", [dict(), dict(dispersion="cell", learn_pi=True),
                                      dict(dispersion="gene-batch", encode_batch=True)],
                         ids=["defaults", "cell-dispersion", "gene-batch-dispersion"])
def test_hostile_but_valid_data_trains_without_nan(settings, epochs_of):
    torch.set_num_threads(1)
    adata = hostile_but_valid()
    fitted = GMVAE(adata, n_clusters=3, seed=0, n_x=10, n_w=5, encoder_hidden=(64,), decoder_hidden=(64,),
                   beta_hidden=(32,), **settings).fit(max_epochs=10, n_samples=3, batch_size=64, progress=False)
    assert len(fitted.history) == epochs_of(fitted, 10)
    assert_finite_outputs(fitted, adata)
    # the huge cell gets an ordinary embedding, not one far outside the others
    latent = adata.obsm["X_gmvae"]
    assert np.abs(latent[[0, 1, 3]]).max() < 10 * np.abs(latent[4:]).max()


def test_reordered_genes_are_realigned_after_a_save(tmp_path):
    adata = toy()
    fitted = GMVAE(adata, n_clusters=2, seed=0, **TINY).fit(max_epochs=2, progress=False)
    reordered = adata[:, np.random.default_rng(1).permutation(adata.n_vars)].copy()
    loaded = GMVAE.load(fitted.save(tmp_path / "model"), reordered)
    np.testing.assert_array_equal(loaded.get_latent(), fitted.get_latent(adata))
