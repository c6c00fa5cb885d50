"The baselines from outside: on the real multiome starter file, PCA leaves the counts alone, is seeded and scores finitely; scVI trains on the cells asked for and embeds every cell; bad input and a missing scVI say what to do."
import re
import sys
import types

import numpy as np
import pytest

from gmvae_nb.baselines import pca_baseline, scvi_baseline
from gmvae_nb.data import load_counts
from gmvae_nb.metrics import METRICS, evaluate


@pytest.fixture(scope="module")
def starter(shared_data):
    return load_counts(shared_data / "openproblems_bmmc_multiome_starter.output_rna.h5ad")


def test_pca_baseline_on_real_counts(starter):
    adata = starter.copy()
    counts_before = adata.layers["counts"].copy()
    pcs = pca_baseline(adata, n_comps=20)
    assert pcs.shape == (500, 20) and adata.obsm["X_pca_unintegrated"] is pcs
    assert (adata.layers["counts"] != counts_before).nnz == 0 and adata.layers["counts"].dtype == np.float32
    np.testing.assert_array_equal(pca_baseline(adata, n_comps=20, key="again"), pcs)  # seeded
    # the real labels include types of 2-4 cells and 2 batches: every metric is still defined
    result = evaluate(adata, embedding="X_pca_unintegrated")
    assert all(np.isfinite(result[key]) for key in METRICS if "own" not in key)
    assert 0.3 < result["nmi_leiden_best"] < 1 and 0 < result["asw_label"] < 1


def test_pca_baseline_errors(starter):
    with pytest.raises(KeyError, match=re.escape("adata has no layer 'raw'; its layers are ['counts']")):
        pca_baseline(starter, layer="raw")
    with pytest.raises(ValueError, match="n_comps=600 must be smaller than both the 500 cells and 600 genes"):
        pca_baseline(starter, n_comps=600)


def test_scvi_baseline_without_scvi_tools_says_how_to_install(monkeypatch, starter):
    monkeypatch.setitem(sys.modules, "scvi", None)  # `import scvi` now raises ImportError, installed or not
    with pytest.raises(ImportError, match=r"'scvi' extra, pip install \"gmvae-nb\[scvi\]\""):
        scvi_baseline(starter)


class StandInSCVI:
    "Stands in for `scvi.model.SCVI` (scvi-tools is an optional extra that `make` does not install): records the cells it is set up and trained on, and embeds a cell as its total count in every dimension."
    calls: dict = {}

    def __init__(self, adata, n_latent):
        self.adata, self.n_latent = adata, n_latent

    @staticmethod
    def setup_anndata(adata, layer, batch_key):
        StandInSCVI.calls["setup"] = (adata.obs_names.tolist(), layer, batch_key)

    def train(self, max_epochs=None, **kwargs):
        StandInSCVI.calls["train"] = (self.adata.obs_names.tolist(), max_epochs, kwargs)

    def get_latent_representation(self, adata=None):
        cells = self.adata if adata is None else adata
        return np.asarray(cells.layers["counts"].sum(axis=1)).reshape(-1, 1).repeat(self.n_latent, axis=1)


def test_scvi_baseline_trains_on_train_cells_and_embeds_every_cell(monkeypatch, starter):
    scvi = types.ModuleType("scvi")
    scvi.settings, scvi.model = types.SimpleNamespace(seed=None), types.SimpleNamespace(SCVI=StandInSCVI)
    monkeypatch.setitem(sys.modules, "scvi", scvi)
    adata = starter.copy()
    train = np.arange(adata.n_obs) % 10 != 0  # a tenth held out, as a sweep holds out its test cells
    latent = scvi_baseline(adata, n_latent=3, seed=7, train_cells=train, max_epochs=2, enable_progress_bar=False)
    trained_on = adata.obs_names[train].tolist()
    assert StandInSCVI.calls["setup"] == (trained_on, "counts", "batch")
    assert StandInSCVI.calls["train"] == (trained_on, 2, {"enable_progress_bar": False}) and scvi.settings.seed == 7
    # every cell embedded, in adata's order, the held-out ones included
    totals = np.asarray(adata.layers["counts"].sum(axis=1)).reshape(-1, 1)
    np.testing.assert_array_equal(latent, totals.repeat(3, axis=1))
    assert adata.obsm["X_scVI"] is latent
    scvi_baseline(adata, key="every_cell")  # without a mask it trains on every cell
    assert StandInSCVI.calls["train"][0] == adata.obs_names.tolist()


def test_scvi_baseline_names_a_bad_mask_before_importing_scvi(monkeypatch, starter):
    monkeypatch.setitem(sys.modules, "scvi", None)  # the mask is checked first: its error, not the missing extra's
    one_donor = (starter.obs["batch"] == "s1d1").to_numpy()
    with pytest.raises(ValueError, match="train_cells holds no cell of batch 's1d2': scVI cannot embed the cells of a batch it never trained on"):
        scvi_baseline(starter, train_cells=one_donor)
    with pytest.raises(ValueError, match="train_cells has 499 entries for 500 cells"):
        scvi_baseline(starter, train_cells=np.ones(499, dtype=bool))
