"""AnnData in, annotated AnnData out (issue 12): the model and `gmvae-nb fit` add their results to the user's object
and keep everything the user had in it (X, layers, obs, obsm, uns), in memory and in the written h5ad."""
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import gmvae_nb
from gmvae_nb.data import load_counts, write_h5ad
from gmvae_nb.model import GMVAE
from gmvae_nb.simulate import simulate

SMALL = dict(n_x=6, n_w=3, encoder_hidden=(32,), decoder_hidden=(32,), beta_hidden=(16,))  # a fast architecture
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c"]


def users_anndata(seed: int = 0) -> ad.AnnData:
    "A user's AnnData as scanpy leaves it: counts in layers['counts'], log-normalised X, a UMAP, a palette, an own obs column."
    adata = simulate("default", n_cells=300, n_genes=100, n_types=3, n_batches=2, seed=seed)
    counts = adata.layers["counts"].toarray()
    adata.X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    adata.obsm["X_umap"] = np.random.default_rng(seed).normal(size=(adata.n_obs, 2)).astype(np.float32)
    adata.uns["cell_type_colors"] = COLORS
    adata.obs["qc_pass"] = np.arange(adata.n_obs) % 3 > 0
    return adata


def test_users_obsm_uns_and_x_survive_fit_annotation_and_h5ad(tmp_path, epochs_of):
    "fit + get_latent + predict + write_h5ad keep the user's X, layers, obs, obsm and uns, and add the annotations and the parameters."
    adata = users_anndata()
    before = adata.copy()
    model = GMVAE(adata, n_clusters=3, seed=2, **SMALL).fit(max_epochs=2, n_samples=1, progress=False, device="cpu")
    assert model.adata is adata  # a reference to the user's object, not a rebuilt one
    latent, clusters = model.get_latent(), model.predict(n_samples=2)
    path = write_h5ad(adata, tmp_path / "annotated.h5ad")
    for annotated in (adata, ad.read_h5ad(path)):
        np.testing.assert_array_equal(annotated.X, before.X)  # the log-normalised X, not the counts
        assert (annotated.layers["counts"] != before.layers["counts"]).nnz == 0 and list(annotated.layers) == ["counts"]
        np.testing.assert_array_equal(annotated.obsm["X_umap"], before.obsm["X_umap"])
        assert list(annotated.uns["cell_type_colors"]) == COLORS
        pd.testing.assert_frame_equal(annotated.obs[before.obs.columns], before.obs)
        assert annotated.obs_names.equals(before.obs_names) and annotated.var_names.equals(before.var_names)
        # ... and the model's annotations, with the parameters in uns as scanpy records its own
        np.testing.assert_array_equal(annotated.obsm["X_gmvae"], latent)
        assert annotated.obsm["X_gmvae_w"].shape == (300, 3) and annotated.obsm["gmvae_proba"].shape == (300, 3)
        np.testing.assert_array_equal(annotated.obs["gmvae_cluster"].astype(int).to_numpy(), clusters)
        entry = annotated.uns["gmvae"]
        assert entry["version"] == gmvae_nb.__version__
        params = entry["params"]
        assert (params["n_clusters"], params["n_x"], params["n_w"], params["seed"]) == (3, 6, 3, 2)
        assert (params["settings"], params["layer"], params["batch_key"]) == ("default", "counts", "batch")
        assert (params["n_samples"], params["n_epochs"]) == (2, epochs_of(model, 2))
        assert list(params["encoder_hidden"]) == [32]
        assert dict(entry["keys"]) == {"latent": "X_gmvae", "latent_w": "X_gmvae_w", "proba": "gmvae_proba",
                                       "cluster": "gmvae_cluster"}


def test_copy_returns_an_annotated_copy_and_key_added_names_the_entries():
    "copy=True leaves the input untouched (as sc.tl.leiden(copy=True)); key_added puts a second model's results beside the first."
    adata = users_anndata()
    model = GMVAE(adata, n_clusters=3, seed=0, **SMALL).fit(max_epochs=2, n_samples=1, progress=False, device="cpu")
    other = users_anndata()  # the same cells and genes, a separate object
    untouched = other.copy()
    annotated = model.predict(other, n_samples=2, copy=True)
    assert annotated is not other and isinstance(annotated, ad.AnnData)
    for name in ("obsm", "uns", "layers"):
        assert list(getattr(other, name)) == list(getattr(untouched, name)), name
    pd.testing.assert_frame_equal(other.obs, untouched.obs)
    np.testing.assert_array_equal(other.X, untouched.X)
    np.testing.assert_array_equal(annotated.obs["gmvae_cluster"].astype(int).to_numpy(), model.predict(adata, n_samples=2))
    latent_copy = model.get_latent(other, copy=True)
    np.testing.assert_array_equal(latent_copy.obsm["X_gmvae"], model.get_latent(adata))
    assert "X_gmvae" not in other.obsm and "gmvae" not in other.uns
    assert model.predict_proba(other, copy=True, key_added="p").obsm["p"].shape == (300, 3)

    second = GMVAE(adata, n_clusters=2, seed=1, **SMALL).fit(max_epochs=1, n_samples=1, progress=False, device="cpu")
    model.predict(other, n_samples=2)
    second.get_latent(other, key_added="X_gmvae_K2")
    second_clusters = second.predict(other, n_samples=2, key_added="gmvae_K2_cluster")
    assert {"gmvae_cluster", "gmvae_K2_cluster"} <= set(other.obs.columns)
    assert {"gmvae_proba", "X_gmvae_K2", "X_gmvae_K2_w", "gmvae_K2_proba"} <= set(other.obsm)
    assert list(other.obs["gmvae_K2_cluster"].cat.categories) == [str(k) for k in np.unique(second_clusters)]
    assert other.uns["gmvae"]["params"]["n_clusters"] == 3
    assert other.uns["X_gmvae_K2"]["params"]["n_clusters"] == 2 and other.uns["gmvae_K2_cluster"]["params"]["n_clusters"] == 2
    assert other.uns["gmvae_K2_cluster"]["keys"] == {"proba": "gmvae_K2_proba", "cluster": "gmvae_K2_cluster"}


def test_scanpy_groups_cells_by_the_clusters_when_components_are_empty():
    """The clusters' column holds the clusters that hold cells, as Leiden's does: with a component no cell is in (as
    `fit` leaves the components the data do not need; here made sure of by setting the weights of the least used one's components to 0),
    scanpy's `rank_genes_groups`, `dendrogram` and `dotplot`, which fail on a category without cells, group the cells
    by it."""
    import matplotlib
    import scanpy as sc
    import torch

    matplotlib.use("Agg")
    adata = users_anndata()
    model = GMVAE(adata, n_clusters=4, seed=0, **SMALL).fit(n_init=1, progress=False, device="cpu")
    least = np.bincount(model.predict(), minlength=4).argmin()
    with torch.no_grad(): model.module.pi_logits[torch.as_tensor(model.cluster_of_component == least)] = -1e4  # its components'
    model.get_latent()
    clusters = model.predict()
    sizes = np.bincount(clusters, minlength=4)
    assert (sizes == 0).any() and (sizes > 0).sum() >= 2 and (sizes[sizes > 0] >= 2).all(), sizes  # scanpy: 2 cells a group
    column = adata.obs["gmvae_cluster"]
    assert list(column.cat.categories) == [str(k) for k in np.unique(clusters)]
    assert (column.astype(int).to_numpy() == clusters).all()  # a category is the cluster's number
    sc.tl.rank_genes_groups(adata, "gmvae_cluster", method="wilcoxon")
    assert list(adata.uns["rank_genes_groups"]["names"].dtype.names) == list(column.cat.categories)
    sc.tl.dendrogram(adata, "gmvae_cluster", use_rep="X_gmvae")
    sc.pl.dotplot(adata, adata.var_names[:3], groupby="gmvae_cluster", show=False)


def test_cli_fit_keeps_the_users_x_umap_uns_and_cells(tmp_path):
    "`gmvae-nb fit` writes the user's file with the annotations added: X (log-normalised), X_umap, uns and every cell kept."
    adata = users_anndata(seed=3)
    adata.layers["counts"][5] = 0  # a cell without counts: left out of training, still in the written file
    adata.layers["counts"].eliminate_zeros()
    data = write_h5ad(adata, tmp_path / "data.h5ad")
    cli = str(Path(sys.executable).with_name("gmvae-nb"))
    done = subprocess.run([cli, "fit", str(data), "-K", "3", "--epochs", "2", "-M", "1", "--n-x", "6", "--n-w", "3",
                           "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "to 299 cells" in done.stdout  # trained without the empty cell
    written = ad.read_h5ad(tmp_path / "run" / "adata.h5ad")
    assert written.obs_names.equals(adata.obs_names)
    np.testing.assert_array_equal(written.X, adata.X)
    np.testing.assert_array_equal(written.obsm["X_umap"], adata.obsm["X_umap"])
    assert list(written.uns["cell_type_colors"]) == COLORS and written.obs["qc_pass"].equals(adata.obs["qc_pass"])
    assert (written.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert written.obsm["X_gmvae"].shape == (300, 6) and written.obs["gmvae_cluster"].notna().all()
    assert written.uns["gmvae"]["params"]["n_clusters"] == 3 and written.uns["gmvae"]["params"]["layer"] == "counts"
    model = GMVAE.load(tmp_path / "run" / "model", written, device="cpu")
    np.testing.assert_array_equal(model.get_latent(written.copy()), written.obsm["X_gmvae"])


def test_cli_fit_with_counts_in_x_reads_them_back_from_x(tmp_path):
    "--layer X: the saved model reads the counts from X, as the written file holds them; --init-mixture reaches fit."
    adata = simulate("default", n_cells=200, n_genes=60, n_types=3, n_batches=2, seed=0)
    adata.X, adata.layers = adata.layers["counts"].copy(), {}
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2))
    data = write_h5ad(adata, tmp_path / "data.h5ad")
    cli = str(Path(sys.executable).with_name("gmvae-nb"))
    done = subprocess.run([cli, "fit", str(data), "--layer", "X", "-K", "2", "--epochs", "1", "-M", "1",
                           "--init-mixture", "gmm", "--init-epochs", "2", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = ad.read_h5ad(tmp_path / "run" / "adata.h5ad")
    assert list(written.layers) == [] and "X_umap" in written.obsm and "layer" not in written.uns["gmvae"]["params"]
    model = GMVAE.load(tmp_path / "run" / "model", written, device="cpu")
    np.testing.assert_array_equal(model.get_latent(written.copy()), written.obsm["X_gmvae"])
    assert (model.train_config["init_mixture"], model.train_config["init_epochs"], len(model.history)) == ("gmm", 2, 3)


def test_load_counts_x_takes_log1p_in_place():
    "load_counts' X is writable (its own values): sc.pp.log1p on it works and the counts in layers['counts'] stay."
    sc = pytest.importorskip("scanpy")
    loaded = load_counts(users_anndata(), label_key=None)
    counts = loaded.layers["counts"].copy()
    sc.pp.log1p(loaded)
    np.testing.assert_allclose(loaded.X.toarray(), np.log1p(counts.toarray()), rtol=1e-6)
    assert (loaded.layers["counts"] != counts).nnz == 0
