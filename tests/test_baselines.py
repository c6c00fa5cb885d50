"The baselines from outside: on the real multiome starter file, PCA leaves the counts alone, is seeded and scores finitely; bad input and a missing scVI say what to do."
import re
import sys

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
