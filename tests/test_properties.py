"""Property-based tests (Hypothesis) over random count matrices, extreme values included: training never produces a
NaN loss or latent, the count check finds exactly the invalid values, in any layout, and the negative binomial
log-pmf is torch's wherever its arguments lie. Derandomised, so every run (and CI) draws the same examples."""
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import NegativeBinomial

from gmvae_nb.data import check_counts
from gmvae_nb.distributions import nb_log_prob
from gmvae_nb.model import GMVAE

TINY = dict(n_x=4, n_w=3, encoder_hidden=(16,), decoder_hidden=(16,), beta_hidden=(8,))
EXTREMES = (0, 1, 2, 10**5, 10**6, 2**24)  # 2**24: the largest count float32 holds exactly
BOUNDED = settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
LAYOUTS = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}


@st.composite
def count_data(draw) -> ad.AnnData:
    "A small AnnData of valid counts in `layers['counts']`: extreme values, all-zero genes and cells, 1-3 batches."
    n_cells, n_genes = draw(st.integers(1, 24)), draw(st.integers(1, 10))
    values = st.one_of(st.sampled_from(EXTREMES), st.integers(0, 20), st.integers(0, 2**24))
    counts = draw(arrays(np.int64, (n_cells, n_genes), elements=values))
    counts[:, draw(arrays(bool, n_genes))] = 0  # all-zero genes
    assume(counts.any())  # a layer without any count is an error (tests/test_hostile.py)
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint32]))
    n_batches = draw(st.integers(1, 3))
    batches = draw(arrays(np.int64, n_cells, elements=st.integers(0, n_batches - 1)))
    layout = LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))]
    obs = pd.DataFrame({"batch": [f"b{b}" for b in batches]}, index=[f"cell{i}" for i in range(n_cells)])
    return ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
                      layers={"counts": layout(counts.astype(dtype))})


@pytest.mark.filterwarnings("ignore:.*cells have zero counts:UserWarning")
@BOUNDED
@given(adata=count_data(), n_clusters=st.integers(1, 3), batch_size=st.sampled_from([2, 5, 128]),
       dispersion=st.sampled_from(["gene", "gene-batch", "cell"]))
def test_training_on_random_counts_never_gives_nan(adata, n_clusters, batch_size, dispersion):
    torch.set_num_threads(1)
    model = GMVAE(adata, n_clusters=n_clusters, seed=0, dispersion=dispersion, **TINY)
    model.fit(max_epochs=2, n_samples=2, batch_size=batch_size, progress=False)
    history = model.history.select_dtypes("number").to_numpy()
    assert history.size and np.isfinite(history).all(), model.history
    latent = model.get_latent()
    assert latent.shape == (adata.n_obs, 4) and np.isfinite(latent).all()
    assert np.isfinite(model.predict_proba(n_samples=2)).all()


BAD_VALUES = {"NaN": np.nan, "infinite": np.inf, "negative": -3.0, "non-integer": 2.5, "above 2**24": 2.0**25}


@BOUNDED
@given(counts=arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 12)), elements=st.sampled_from(EXTREMES)),
       problem=st.sampled_from(sorted(BAD_VALUES)), data=st.data(),
       layout=st.sampled_from(sorted(LAYOUTS)), block_entries=st.sampled_from([1, 7, 2**22]))
def test_count_check_finds_exactly_the_bad_values(counts, problem, data, layout, block_entries):
    cells, genes = pd.Index([f"c{i}" for i in range(counts.shape[0])]), pd.Index([f"g{j}" for j in range(counts.shape[1])])
    np.testing.assert_array_equal(check_counts(LAYOUTS[layout](counts), cells, genes, block_entries=block_entries),
                                  counts.sum(1))
    bad = data.draw(arrays(bool, counts.shape))
    bad.flat[data.draw(st.integers(0, bad.size - 1))] = True
    counts[bad] = BAD_VALUES[problem]
    with pytest.raises(ValueError) as raised:
        check_counts(LAYOUTS[layout](counts), cells, genes, block_entries=block_entries)
    found = re.search(r"but has (.*)\. $", raised.value.args[0]).group(1)
    assert found.startswith(f"{bad.sum():,} {problem}") and ";" not in found, found


@settings(BOUNDED, max_examples=200)
@given(y=st.integers(0, 10**6), log_mean=st.floats(-18.0, 14.0), log_theta=st.floats(-9.0, 9.0))
def test_nb_log_prob_is_torchs_negative_binomial(y, log_mean, log_theta):
    "Counts up to 10⁶, means from 10⁻⁸ to 10⁶ and dispersions from 10⁻⁴ to 10⁴ in float64: a log-probability, and torch's."
    y, log_mean, log_theta = (torch.tensor(float(v), dtype=torch.float64) for v in (y, log_mean, log_theta))
    ours = nb_log_prob(y, log_mean, log_theta).item()
    reference = NegativeBinomial(total_count=log_theta.exp(), logits=log_mean - log_theta).log_prob(y).item()
    assert ours <= 1e-12  # the log of a probability of a discrete distribution
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-9)
