"The simulator from outside: determinism, the AnnData it returns, overrides, and calibration against the real starter files."
import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from gmvae_nb.calibrate import fit_params
from gmvae_nb.simulate import PRESETS, simulate, zero_fraction

SMALL = dict(n_cells=300, n_genes=200)
STARTERS = {
    "multiome": ("openproblems_bmmc_multiome_starter.output_rna.h5ad", (500, 600)),
    "cite": ("openproblems_bmmc_cite_starter.output_rna.h5ad", (600, 1000)),
}


def read_counts(path):
    "A starter file with its counts, through the package's loader when it has one."
    try:
        from gmvae_nb.data import load_counts
    except ImportError:
        return ad.read_h5ad(path)
    return load_counts(path)


def test_same_seed_same_counts_other_seed_other_counts():
    a, b = simulate("default", seed=11, **SMALL), simulate("default", seed=11, **SMALL)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    assert a.obs.equals(b.obs)
    c = simulate("default", seed=12, **SMALL)
    assert (a.layers["counts"] != c.layers["counts"]).nnz > 0


def test_result_does_not_depend_on_threads():
    a, b = (simulate("default", seed=3, n_jobs=n, **SMALL).layers["counts"] for n in (1, 2))
    assert (a != b).nnz == 0


def test_anndata_layout():
    adata = simulate("default", seed=0, **SMALL)
    assert adata.shape == (300, 200)
    counts = adata.layers["counts"]
    assert sp.isspmatrix_csr(counts) and counts.dtype == np.float32
    assert (adata.X != counts).nnz == 0
    assert np.array_equal(counts.data, np.round(counts.data)) and counts.data.min() > 0
    for key in ("batch", "site", "donor", "cell_type", "lineage"):
        assert adata.obs[key].dtype == "category", key
    assert list(adata.obs["batch"].cat.categories) == list(PRESETS["default"]["batches"])
    assert list(adata.obs["cell_type"].cat.categories) == list(PRESETS["default"]["cell_types"])
    assert (adata.obs["site"].astype(str) + adata.obs["donor"].astype(str)).equals(adata.obs["batch"].astype(str))
    lineage_of = dict(zip(PRESETS["default"]["cell_types"], PRESETS["default"]["lineages"]))
    assert (adata.obs["cell_type"].astype(str).map(lineage_of) == adata.obs["lineage"].astype(str)).all()
    assert (adata.obs["library_size"] > 0).all()
    assert np.allclose(adata.obs["n_counts"], np.asarray(counts.sum(1)).ravel())
    truth = adata.uns["simulation"]
    assert truth["seed"] == 0 and truth["preset"] == "default"
    assert truth["config"]["n_cells"] == 300 and truth["config"]["n_genes"] == 200
    n_types, n_batches = len(PRESETS["default"]["cell_types"]), len(PRESETS["default"]["batches"])
    assert truth["base_mean"].shape == truth["dispersion"].shape == truth["is_outlier"].shape == (200,)
    assert truth["type_de"].shape == (n_types, 200)
    assert truth["lineage_de"].shape == (len(truth["lineages"]), 200)
    assert truth["site_factor"].shape == (len(truth["sites"]), 200)
    assert truth["donor_factor"].shape == (len(truth["donors"]), 200)
    assert truth["type_proportions"].shape == (n_batches, n_types)


def test_bmmc_preset_is_the_full_data_set():
    bmmc = PRESETS["bmmc"]
    assert (bmmc["n_cells"], bmmc["n_genes"]) == (69_249, 13_431)
    assert len(bmmc["cell_types"]) == 22 and len(set(bmmc["lineages"])) >= 4
    assert {"CD8+ T", "CD4+ T naive", "CD14+ Mono", "Erythroblast", "NK", "HSC"} <= set(bmmc["cell_types"])
    assert len(bmmc["batches"]) == 13 and bmmc["batches"][:2] == ("s1d1", "s1d2")
    assert len({b.split("d")[0] for b in bmmc["batches"]}) == 4
    adata = simulate("bmmc", n_cells=500, n_genes=300)
    assert adata.obs["batch"].nunique() == 13 and adata.obs["site"].nunique() == 4
    assert len(adata.obs["cell_type"].cat.categories) == 22


def test_bmmc_preset_has_the_full_data_sparsity():
    adata = simulate("bmmc", n_cells=1000)  # the full 13,431 genes
    assert abs(zero_fraction(adata.layers["counts"]) - 0.91) < 0.01


def test_overrides():
    adata = simulate("default", n_types=4, n_batches=6, seed=1, lib_loc=8.0, **SMALL)
    assert list(adata.obs["cell_type"].cat.categories) == list(PRESETS["default"]["cell_types"][:4])
    assert adata.obs["batch"].cat.categories.size == 6
    assert all(b[0] == "s" and "d" in b for b in adata.obs["batch"].cat.categories)
    assert adata.uns["simulation"]["config"]["lib_loc"] == 8.0
    assert abs(np.log(np.median(adata.obs["n_counts"])) - 8.0) < 0.2
    more = simulate("default", n_types=12, **SMALL)
    assert len(more.obs["cell_type"].cat.categories) == 12
    fitted = simulate("default", params={"lib_loc": 4.0}, seed=1, **SMALL)
    assert abs(np.log(np.median(fitted.obs["n_counts"])) - 4.0) < 0.2
    # explicit overrides win over params
    assert simulate("default", params={"lib_loc": 4.0}, lib_loc=5.0, **SMALL).uns["simulation"]["config"]["lib_loc"] == 5.0


def test_bad_overrides_fail_clearly():
    with pytest.raises(TypeError, match=r"lineage_de_lco.*valid keys are:.*lineage_de_loc"):
        simulate("default", lineage_de_lco=2.0, **SMALL)
    with pytest.raises(TypeError, match="n_cels"):
        simulate("default", params={"n_cels": 10})
    with pytest.raises(ValueError, match="no-such-preset"):
        simulate("no-such-preset")
    with pytest.raises(ValueError, match="n_types must be a positive integer"):
        simulate("default", n_types=0)
    with pytest.raises(ValueError, match="outlier_prob is a probability"):
        simulate("default", outlier_prob=2.0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        simulate("default", seed=-3)


def test_written_file_loads_back_sparse(tmp_path):
    adata = simulate("default", seed=2, **SMALL)
    adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert sp.issparse(back.X) and back.layers["counts"].format == "csr"
    assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert back.obs["cell_type"].dtype == "category"
    assert np.array_equal(back.uns["simulation"]["type_de"], adata.uns["simulation"]["type_de"])


@pytest.mark.parametrize("name", sorted(STARTERS))
def test_calibrated_against_starter_file(shared_data, name):
    file, shape = STARTERS[name]
    real = read_counts(shared_data / file)
    assert real.shape == shape
    params = fit_params(real)
    real_counts = sp.csr_matrix(real.layers["counts"])
    real_zeros, real_median = zero_fraction(real_counts), np.median(np.asarray(real_counts.sum(1)))
    for seed in (1, 2):  # not the seed the fit itself simulated with
        sim = simulate(n_cells=real.n_obs, n_genes=real.n_vars, params=params, seed=seed)
        counts = sim.layers["counts"]
        assert abs(zero_fraction(counts) - real_zeros) <= 0.02, (name, seed, zero_fraction(counts), real_zeros)
        sim_median = np.median(np.asarray(counts.sum(1)))
        assert abs(sim_median / real_median - 1) <= 0.10, (name, seed, sim_median, real_median)


def test_default_clusters_recoverable_but_not_trivial():
    adata = simulate("default", seed=0)
    counts = adata.layers["counts"]
    normalised = np.log1p(sp.diags(1e4 / np.asarray(counts.sum(1)).ravel()) @ counts).toarray()
    with threadpool_limits(1):
        pcs = PCA(20, random_state=0).fit_transform(normalised)
        types = adata.obs["cell_type"].to_numpy()
        ari = adjusted_rand_score(types, KMeans(len(set(types)), n_init=4, random_state=0).fit_predict(pcs))
        silhouettes = {k: silhouette_score(pcs, adata.obs[k].to_numpy()) for k in ("cell_type", "lineage")}
    assert 0.15 < ari < 0.8, ari
    assert silhouettes["lineage"] > silhouettes["cell_type"], silhouettes  # lineage-mates overlap
