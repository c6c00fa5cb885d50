"The data layer from outside: real starter files, GEO-style and plain h5ad files, in-memory AnnData, every bad input."
import re
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata.io import read_elem
from hypothesis import given, settings
from hypothesis import strategies as st

import gmvae_nb.data
from gmvae_nb.data import SPLITS, load_counts, select_genes, split

STARTERS = {  # file: (shape, number of cell types, cells per batch)
    "openproblems_bmmc_multiome_starter.output_rna.h5ad": ((500, 600), 21, {"s1d1": 221, "s1d2": 279}),
    "openproblems_bmmc_cite_starter.output_rna.h5ad": ((600, 1000), 41, {"s1d1": 311, "s1d2": 289}),
}


def toy(counts=None, batches=("a", "a", "a", "b", "b", "b"), genes=("g0", "g1", "g2", "g3")) -> ad.AnnData:
    "A small in-memory AnnData with counts in `layers['counts']` (and log values in X), a batch and a label."
    counts = np.arange(len(batches) * len(genes)).reshape(len(batches), len(genes)) % 5 + 1.0 if counts is None else counts
    obs = pd.DataFrame({"batch": list(batches), "cell_type": ["T", "B"] * (len(batches) // 2)},
                       index=[f"cell{i}" for i in range(len(batches))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate gene names on purpose in some tests
        log_values = counts.copy() if sp.issparse(counts) else np.log1p(np.abs(counts))
        return ad.AnnData(X=log_values, obs=obs, var=pd.DataFrame(index=list(genes)), layers={"counts": counts})


def geo_style(path, counts_format="csr"):
    """Write a small file laid out like the GEO NeurIPS 2021 files: counts of GEX genes and ADT tags (interleaved, one tag
    named like a gene) in `layers['counts']`, a log-normalised X, obsm and obsp. Returns the GEX counts as dense."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(40, 7)).astype(np.float64)
    counts[:, 0] += 1  # no cell without GEX counts
    types = np.array(["GEX", "ADT", "GEX", "GEX", "ADT", "GEX", "ADT"])
    names = ["CD4", "CD4", "MS4A1", "NKG7", "CD19", "CD8A", "CD8"]  # the tag CD4 is named like the gene: fine once only GEX is kept
    layer = sp.csr_matrix(counts) if counts_format == "csr" else sp.csc_matrix(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the repeated name CD4
        adata = ad.AnnData(
            X=sp.csr_matrix(np.log1p(counts)),
            obs=pd.DataFrame({"batch": rng.choice(["s1d1", "s2d4", "s3d7"], 40), "cell_type": rng.choice(["B", "NK", "T"], 40)},
                             index=[f"cell{i}" for i in range(40)]),
            var=pd.DataFrame({"feature_types": pd.Categorical(types), "gene_ids": [f"ENSG{i}" for i in range(7)]}, index=names),
            layers={"counts": layer}, obsm={"GEX_X_pca": rng.normal(size=(40, 3))}, obsp={"connectivities": sp.eye(40, format="csr")},
        )
    write(adata, path)
    return counts[:, types == "GEX"]


def write(adata: ad.AnnData, path):
    "Write `adata` to `path` quietly (anndata warns about the odd inputs these tests make on purpose); returns `path`."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    return path


def check_counts(adata: ad.AnnData, expected):
    "Counts are CSR float32 with the expected values; X shows them with its own writable values over their read-only structure."
    counts = adata.layers["counts"]
    assert isinstance(counts, sp.csr_matrix) and counts.dtype == np.float32 and counts.has_canonical_format
    np.testing.assert_array_equal(counts.toarray(), np.asarray(expected))
    np.testing.assert_array_equal(adata.X.toarray(), np.asarray(expected))
    assert not np.shares_memory(adata.X.data, counts.data) and adata.X.data.flags.writeable and counts.data.flags.writeable
    for buffer in ("indices", "indptr"):
        assert np.shares_memory(getattr(adata.X, buffer), getattr(counts, buffer)) and not getattr(adata.X, buffer).flags.writeable


# real starter files

@pytest.mark.parametrize("name", STARTERS)
def test_starter_files(shared_data, name):
    shape, n_types, batches = STARTERS[name]
    adata = load_counts(shared_data / name)
    assert adata.shape == shape
    assert adata.obs["batch"].value_counts().to_dict() == batches
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert len(adata.obs["cell_type"].cat.categories) == n_types
    assert all(isinstance(c, str) for c in adata.obs["batch"].cat.categories)
    with h5py.File(shared_data / name, "r") as file:
        stored = read_elem(file["layers/counts"])
    assert np.array_equal(stored.data, np.round(stored.data))  # the file holds integers ...
    check_counts(adata, stored.toarray())  # ... and the loader returns exactly them
    assert adata.uns["gmvae_nb"] == {"source": str((shared_data / name).resolve()), "source_layer": "counts", "layer": "counts",
                                     "batch_key": "batch", "label_key": "cell_type", "feature_type": "GEX",
                                     "n_empty_cells_dropped": 0}
    assert not adata.obsm and list(adata.layers) == ["counts"]


def test_starter_file_read_in_small_blocks(shared_data, monkeypatch):
    "Reading block by block (many CSC column blocks) gives the same matrix."
    path = shared_data / "openproblems_bmmc_cite_starter.output_rna.h5ad"
    whole = load_counts(path).layers["counts"]
    monkeypatch.setattr(gmvae_nb.data, "_BLOCK_ENTRIES", 5_000)
    assert (load_counts(path).layers["counts"] != whole).nnz == 0


def test_loaded_file_round_trips(shared_data, tmp_path):
    "The result can be written to h5ad and loaded again."
    adata = load_counts(shared_data / "openproblems_bmmc_multiome_starter.output_rna.h5ad")
    again = load_counts(write(adata, tmp_path / "again.h5ad"))
    assert (again.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert again.obs["cell_type"].equals(adata.obs["cell_type"])


def test_scanpy_preprocesses_x_in_place_and_the_counts_stay(shared_data):
    "sc.pp.log1p straight on the loaded object (not read-only any more), then normalize_total, change X and leave the counts."
    sc = pytest.importorskip("scanpy")
    adata = load_counts(shared_data / "openproblems_bmmc_cite_starter.output_rna.h5ad")
    counts = adata.layers["counts"].copy()
    sc.pp.log1p(adata)
    np.testing.assert_allclose(adata.X.toarray(), np.log1p(counts.toarray()), rtol=1e-6)
    sc.pp.normalize_total(adata, target_sum=1e4)
    assert (adata.layers["counts"] != counts).nnz == 0 and adata.layers["counts"].max() > 20


# GEO-style, plain and in-memory sources

@pytest.mark.parametrize("counts_format", ["csr", "csc"])
@pytest.mark.parametrize("block_entries", [2**24, 10])
def test_geo_style_file_keeps_gex_only(tmp_path, monkeypatch, counts_format, block_entries):
    path = tmp_path / "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad"
    gex = geo_style(path, counts_format)
    with h5py.File(path, "r+") as file:  # the loader must not even look at X, obsm or obsp: make them unreadable
        for name in ("X", "obsm", "obsp"):
            del file[name]
            file[name] = np.array([b"not for the loader"])
    monkeypatch.setattr(gmvae_nb.data, "_BLOCK_ENTRIES", block_entries)
    adata = load_counts(path)
    assert adata.var_names.tolist() == ["CD4", "MS4A1", "NKG7", "CD8A"]
    assert (adata.var["feature_types"] == "GEX").all() and "gene_ids" in adata.var
    check_counts(adata, gex)
    assert not adata.obsm and not adata.obsp
    assert adata.obs["batch"].cat.categories.tolist() == ["s1d1", "s2d4", "s3d7"]


def test_geo_style_file_other_feature_type(tmp_path):
    geo_style(tmp_path / "geo.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cells have no ADT counts
        assert load_counts(tmp_path / "geo.h5ad", feature_type="ADT").var_names.tolist() == ["CD4", "CD19", "CD8"]
    with pytest.raises(ValueError, match=re.escape("1 gene names occur more than once (e.g. ['CD4'])")):
        load_counts(tmp_path / "geo.h5ad", feature_type=None)  # the gene CD4 and the tag CD4


@pytest.mark.parametrize("stored", ["dense", "csr", "csc"])
def test_plain_h5ad_with_counts_in_x(tmp_path, stored):
    counts = np.array([[1, 0, 4], [0, 2, 0], [3, 0, 1]], dtype=np.int64)
    matrix = {"dense": counts, "csr": sp.csr_matrix(counts), "csc": sp.csc_matrix(counts)}[stored]
    adata = ad.AnnData(X=matrix, obs=pd.DataFrame({"batch": [2, 1, 2]}, index=["x", "y", "z"]))
    loaded = load_counts(write(adata, tmp_path / "plain.h5ad"), layer=None, label_key=None)
    check_counts(loaded, counts)
    assert loaded.obs["batch"].cat.categories.tolist() == ["1", "2"]
    assert loaded.uns["gmvae_nb"]["source_layer"] is None and loaded.uns["gmvae_nb"]["label_key"] is None


def test_in_memory_anndata_is_left_unchanged():
    adata = toy()
    before = (adata.X.copy(), adata.layers["counts"].copy(), adata.obs.copy(), adata.var.copy())
    loaded = load_counts(adata)
    check_counts(loaded, adata.layers["counts"])
    assert isinstance(loaded.obs["batch"].dtype, pd.CategoricalDtype) and loaded.uns["gmvae_nb"]["source"] == "AnnData (in memory)"
    np.testing.assert_array_equal(adata.X, before[0])
    np.testing.assert_array_equal(adata.layers["counts"], before[1])
    pd.testing.assert_frame_equal(adata.obs, before[2])
    pd.testing.assert_frame_equal(adata.var, before[3])
    assert loaded.obs is not adata.obs and not np.shares_memory(loaded.layers["counts"].data, adata.layers["counts"])


def test_labels_are_optional_and_may_be_missing():
    adata = toy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.loc["cell0", "cell_type"] = np.nan  # an unlabelled cell
    loaded = load_counts(adata)
    assert loaded.obs["cell_type"].isna().tolist() == [True] + [False] * 5
    assert loaded.obs["cell_type"].cat.categories.tolist() == ["B", "T"]
    assert "cell_type" in load_counts(adata, label_key=None).obs  # kept as metadata, just not used as the label


# every bad input gets its error, and the source is left as it was

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.h5ad"))):
        load_counts(tmp_path / "nope.h5ad")


def test_missing_layer(shared_data, tmp_path):
    path = shared_data / "openproblems_bmmc_multiome_starter.output_rna.h5ad"
    with pytest.raises(KeyError, match=re.escape("has no layer 'raw'; its layers are ['counts']. Use layer=None")):
        load_counts(path, layer="raw")
    with pytest.raises(KeyError, match=re.escape("The AnnData has no layer 'spliced'; its layers are ['counts']")):
        load_counts(toy(), layer="spliced")


@pytest.mark.parametrize(("keys", "message"), [
    (dict(batch_key="donor"), "obs has no batch column 'donor'; obs columns: ['batch', 'cell_type']"),
    (dict(label_key="celltype"), "obs has no label column 'celltype'; obs columns: ['batch', 'cell_type']. Pass label_key=<column>, or label_key=None"),
])
def test_missing_obs_key(keys, message):
    with pytest.raises(KeyError, match=re.escape(message)):
        load_counts(toy(), **keys)


@pytest.mark.parametrize(("value", "problem"), [
    (0.5, "non-integer"), (-2.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite"), (2.0**25, "above 2**24"),
])
@pytest.mark.parametrize("where", ["memory", "file"])
def test_invalid_counts(tmp_path, value, problem, where):
    adata = toy()
    adata.layers["counts"][[1, 4], 2] = value
    before = adata.layers["counts"].copy()
    source = adata if where == "memory" else write(adata, tmp_path / "bad.h5ad")
    shown = f"{value:g}"
    with pytest.raises(ValueError, match=re.escape(
            f"layers['counts'] must hold raw counts (finite, non-negative integers) but has 2 {problem}")) as error:
        load_counts(source)
    assert f"(e.g. {shown} at cell 'cell1', gene 'g2')" in str(error.value)
    assert "Point `layer` at the raw counts (layers: ['counts']; layer=None reads X)" in str(error.value)
    np.testing.assert_array_equal(adata.layers["counts"], before)


def test_log_normalised_x_is_refused():
    with pytest.raises(ValueError, match="X must hold raw counts .* but has 24 non-integer"):
        load_counts(toy(), layer=None)


def test_all_problems_are_counted_together():
    counts = toy().layers["counts"]
    counts[0, 0], counts[1, 1], counts[2, 1] = np.nan, -1, 1.5
    with pytest.raises(ValueError, match=re.escape("but has 1 NaN (e.g. nan at cell 'cell0', gene 'g0'); "
                                                   "1 negative (e.g. -1 at cell 'cell1', gene 'g1'); "
                                                   "1 non-integer (e.g. 1.5 at cell 'cell2', gene 'g1')")):
        load_counts(toy(counts))


def test_cells_without_counts_are_dropped_with_a_warning(tmp_path):
    counts = toy().layers["counts"]
    counts[[1, 3]] = 0
    with pytest.warns(UserWarning, match=re.escape(
            "Dropping 2 of 6 cells with zero counts in layers['counts'] (e.g. ['cell1', 'cell3']); pass empty_cells='error'")):
        loaded = load_counts(toy(counts))
    assert loaded.obs_names.tolist() == ["cell0", "cell2", "cell4", "cell5"]
    assert loaded.uns["gmvae_nb"]["n_empty_cells_dropped"] == 2
    check_counts(loaded, counts[[0, 2, 4, 5]])
    with pytest.raises(ValueError, match=re.escape("Found 2 of 6 cells with zero counts in layers['counts'] (e.g. ['cell1', 'cell3'])")):
        load_counts(toy(counts), empty_cells="error")
    with pytest.raises(ValueError, match="All cells have zero counts"):
        load_counts(toy(np.zeros((6, 4))))


def test_stored_zeros_make_no_counts():
    counts = sp.csr_matrix(toy().layers["counts"])
    counts.data[counts.indptr[2]:counts.indptr[3]] = 0  # cell2 keeps its entries, all explicit zeros
    with pytest.warns(UserWarning, match=re.escape("Dropping 1 of 6 cells with zero counts in layers['counts'] (e.g. ['cell2'])")):
        assert load_counts(toy(counts)).n_obs == 5


def test_empty_cells_option_is_checked():
    with pytest.raises(ValueError, match="empty_cells must be 'drop' or 'error', not 'keep'"):
        load_counts(toy(), empty_cells="keep")


def test_duplicate_gene_names():
    with pytest.raises(ValueError, match=re.escape("1 gene names occur more than once (e.g. ['g1'])") + ".*var_names_make_unique"):
        load_counts(toy(genes=("g0", "g1", "g1", "g3")))


def test_feature_type_that_selects_nothing(shared_data):
    with pytest.raises(ValueError, match=re.escape("feature_type='ATAC' selects no features; var['feature_types'] holds ['GEX']")):
        load_counts(shared_data / "openproblems_bmmc_cite_starter.output_rna.h5ad", feature_type="ATAC")


def test_batch_with_missing_values():
    adata = toy()
    adata.obs.loc[["cell2", "cell5"], "batch"] = None
    with pytest.raises(ValueError, match=re.escape("obs['batch'] has no value for 2 of 6 cells (e.g. ['cell2', 'cell5'])")):
        load_counts(adata)


# highly variable genes

@pytest.fixture(scope="module")
def cite(shared_data):
    return load_counts(shared_data / "openproblems_bmmc_cite_starter.output_rna.h5ad")


def test_select_genes_picks_n_top_genes(cite):
    hvg = select_genes(cite, n_top_genes=300)
    assert hvg.shape == (600, 300) and cite.shape == (600, 1000)
    assert "highly_variable" not in cite.var  # subset=True leaves the input alone
    assert hvg.var["highly_variable"].all() and hvg.var["highly_variable_nbatches"].max() == 2
    assert list(hvg.var_names) == [g for g in cite.var_names if g in set(hvg.var_names)]  # original order
    check_counts(hvg, cite[:, hvg.var_names].layers["counts"].toarray())
    assert hvg.uns["gmvae_nb"]["batch_key"] == "batch"


def test_select_genes_without_subsetting(cite):
    annotated = select_genes(cite.copy(), n_top_genes=100, batch_key=None, subset=False)
    assert annotated.shape == (600, 1000) and annotated.var["highly_variable"].sum() == 100
    assert "highly_variable_nbatches" not in annotated.var


def test_select_genes_errors(cite):
    with pytest.raises(ValueError, match=re.escape("n_top_genes must be between 1 and the number of genes (1,000), not 5,000")):
        select_genes(cite, n_top_genes=5000)
    with pytest.raises(ValueError, match="not 0"):
        select_genes(cite, n_top_genes=0)
    with pytest.raises(KeyError, match="obs has no batch column 'site'"):
        select_genes(cite, n_top_genes=100, batch_key="site")
    with pytest.raises(KeyError, match="has no layer 'raw'"):
        select_genes(cite, n_top_genes=100, layer="raw")


# train / validation / test

def test_split_is_seeded_and_stratified(cite):
    first = split(cite.copy(), seed=3).obs["split"]
    assert first.cat.categories.tolist() == list(SPLITS)
    assert first.equals(split(cite.copy(), seed=3).obs["split"])
    assert not first.equals(split(cite.copy(), seed=4).obs["split"])
    table = pd.crosstab(cite.obs["batch"], first)
    assert table.to_dict("index") == {"s1d1": {"train": 249, "validation": 31, "test": 31},
                                      "s1d2": {"train": 231, "validation": 29, "test": 29}}


def test_split_in_place_records_settings():
    adata = toy()
    assert split(adata, fractions=(0.5, 0.5, 0.0), key="fold") is adata
    assert adata.obs["fold"].value_counts().to_dict() == {"train": 4, "validation": 2, "test": 0}
    assert adata.uns["gmvae_nb"]["split"] == {"key": "fold", "fractions": [0.5, 0.5, 0.0], "seed": 0, "batch_key": "batch"}


@pytest.mark.parametrize("fractions", [(0.9, 0.2, -0.1), (0.5, 0.2, 0.2), (0.5, 0.5), (np.nan, 0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers .* that sum to 1"):
        split(toy(), fractions=fractions)


def test_split_needs_batches():
    adata = toy()
    with pytest.raises(KeyError, match="obs has no batch column 'donor'"):
        split(adata, batch_key="donor")
    adata.obs.loc["cell1", "batch"] = None
    with pytest.raises(ValueError, match=re.escape("obs['batch'] has no value for 1 of 6 cells (e.g. ['cell1'])")):
        split(adata)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
       weights=st.tuples(*[st.integers(0, 10)] * 3).filter(lambda w: sum(w) > 0), seed=st.integers(0, 2**32 - 1))
def test_split_sizes_follow_fractions_in_every_batch(sizes, weights, seed):
    fractions = np.array(weights) / sum(weights)
    batches = np.repeat([f"b{i}" for i in range(len(sizes))], sizes)
    adata = ad.AnnData(obs=pd.DataFrame({"batch": batches}, index=[f"c{i}" for i in range(len(batches))]))
    table = pd.crosstab(split(adata, fractions=fractions, seed=seed).obs["batch"], adata.obs["split"]).reindex(
        columns=list(SPLITS), fill_value=0)
    for batch, n in zip(table.index, table.sum(axis=1)):
        counts = table.loc[batch].to_numpy()
        assert np.all(np.abs(counts - n * fractions) < 2)  # rounding, plus at most one cell moved to a small part
        if n >= np.count_nonzero(fractions):
            assert np.all(counts[fractions > 0] >= 1)  # every part the fractions allow gets cells
        assert np.all(counts[fractions == 0] == 0)
