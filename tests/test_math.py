"""The mathematics and the networks from outside: NB likelihood, ELBO terms, GMVAEModule layout and limits.

Run with `.venv/bin/python -m pytest tests/test_math.py -q`.
"""

import copy
import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import NegativeBinomial, Normal, kl_divergence

from gmvae_nb.distributions import log_count_normaliser, nb_log_likelihood, nb_log_prob
from gmvae_nb.elbo import (
    LOGVAR_RANGE,
    TERMS,
    elbo_terms,
    kl_normal,
    kl_standard_normal,
    loss,
    neg_elbo_marginal,
    normal_entropy,
    normal_log_prob,
    surrogate_cond,
)
from gmvae_nb.modules import LOG_THETA_RANGE, GMVAEModule, assert_cellwise

F64 = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# Negative binomial
# ----------------------------------------------------------------------------------------------------------------------

def torch_nb(y, log_mean, log_theta):
    "torch's NB: total_count = θ, logits = log m − log θ."
    return NegativeBinomial(total_count=log_theta.exp(), logits=log_mean - log_theta).log_prob(y)


@pytest.fixture
def extreme_grid():
    "Means 1e-8 … 1e6 × dispersions 1e-4 … 1e4 in float64."
    means = torch.logspace(-8, 6, 15, dtype=F64)[:, None].expand(15, 9)
    thetas = torch.logspace(-4, 4, 9, dtype=F64)[None, :].expand(15, 9)
    return means, thetas


@pytest.mark.parametrize("max_count", [None, 10, 1_000, 1_000_000])
def test_nb_log_prob_matches_torch_on_extremes(extreme_grid, max_count):
    means, thetas = extreme_grid
    g = generator(max_count or 0)
    y = torch.poisson(means, generator=g) if max_count is None else \
        torch.randint(0, max_count, means.shape, generator=g).to(F64)
    ours = nb_log_prob(y, means.log(), thetas.log())
    reference = torch_nb(y, means.log(), thetas.log())
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


def test_nb_log_prob_matches_scipy_where_scipy_is_accurate(extreme_grid):
    means, thetas = extreme_grid
    y = torch.randint(0, 1000, means.shape, generator=generator(1)).to(F64)
    reference = scipy.stats.nbinom(n=thetas.numpy(), p=(thetas / (thetas + means)).numpy()).logpmf(y.numpy())
    reference = torch.from_numpy(reference)
    accurate = means / thetas > 1e-6  # below, scipy's log(1 − p) with p ≈ 1 loses digits
    ours = nb_log_prob(y, means.log(), thetas.log())
    torch.testing.assert_close(ours[accurate], reference[accurate], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_nb_log_prob_matches_mpmath_where_scipy_does_not():
    mpmath = pytest.importorskip("mpmath")
    y, m, theta = 835.0, 1e-8, 1e4
    with mpmath.workdps(50):
        Y, M, T = mpmath.mpf(y), mpmath.mpf(m), mpmath.mpf(theta)
        exact = float(T * (mpmath.log(T) - mpmath.log(T + M)) + Y * (mpmath.log(M) - mpmath.log(T + M))
                      + mpmath.loggamma(Y + T) - mpmath.loggamma(T) - mpmath.loggamma(Y + 1))
    ours = nb_log_prob(torch.tensor(y, dtype=F64), torch.tensor(m, dtype=F64).log(), torch.tensor(theta, dtype=F64).log())
    assert ours.item() == pytest.approx(exact, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(y=st.integers(0, 10**6), log_mean=st.floats(-18.0, 14.0), log_theta=st.floats(-9.0, 9.0))
def test_nb_log_prob_property(y, log_mean, log_theta):
    args = (torch.tensor(float(y), dtype=F64), torch.tensor(log_mean, dtype=F64), torch.tensor(log_theta, dtype=F64))
    ours, reference = nb_log_prob(*args), torch_nb(*args)
    assert ours.item() <= 1e-12  # a log-probability of a discrete distribution
    assert ours.item() == pytest.approx(reference.item(), rel=1e-9, abs=1e-9)


def test_nb_log_prob_gradcheck():
    y = torch.tensor([0.0, 1.0, 3.0, 17.0, 250.0, 1e4], dtype=F64)
    log_mean = torch.tensor([-5.0, 0.3, 1.2, 2.5, 5.0, 9.0], dtype=F64, requires_grad=True)
    log_theta = torch.tensor([-3.0, 0.0, 4.0, -1.0, 8.0, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lm, lt: nb_log_prob(y, lm, lt), (log_mean, log_theta))


def minibatch(n_cells=6, n_genes=40, n_samples=3, seed=0, dtype=F64):
    "Counts with a 10⁶-UMI cell, an all-zero gene and an empty cell; logits with a sample axis."
    g = generator(seed)
    counts = torch.poisson(torch.rand(n_cells, n_genes, generator=g, dtype=dtype) ** 4 * 20, generator=g)
    counts[0] = torch.poisson(torch.full((n_genes,), 1e6 / n_genes, dtype=dtype), generator=g)
    counts[:, 3] = 0
    counts[-1] = 0
    logits = torch.randn(n_samples, n_cells, n_genes, generator=g, dtype=dtype)
    return counts, logits, counts.sum(-1).clamp(min=1).log(), g


def dense_reference(counts, logits, log_library, log_theta):
    return nb_log_prob(counts, log_library[:, None] + torch.log_softmax(logits, -1), log_theta).sum(-1)


@pytest.mark.parametrize("theta_shape", [(40,), (6, 40), (3, 6, 40), (1, 40), ()])
def test_sparse_per_cell_sum_equals_dense_sum(theta_shape):
    counts, logits, log_library, g = minibatch()
    log_theta = torch.randn(theta_shape, generator=g, dtype=F64) * 3
    ours = nb_log_likelihood(counts, logits, log_library, log_theta)
    assert ours.shape == (3, 6)
    torch.testing.assert_close(ours, dense_reference(counts, logits, log_library, log_theta), rtol=1e-9, atol=1e-8)
    precomputed = nb_log_likelihood(counts, logits, log_library, log_theta, nonzero=counts.nonzero(as_tuple=True))
    assert torch.equal(precomputed, ours)


def test_per_cell_likelihood_without_sample_axis_and_with_extreme_dispersions():
    counts, logits, log_library, _ = minibatch()
    for log_theta in (torch.full((40,), LOG_THETA_RANGE[0], dtype=F64), torch.full((40,), LOG_THETA_RANGE[1], dtype=F64)):
        ours = nb_log_likelihood(counts, logits[0], log_library, log_theta)
        assert ours.shape == (6,)
        torch.testing.assert_close(ours, dense_reference(counts, logits[0], log_library, log_theta), rtol=1e-9, atol=1e-8)


def test_per_cell_likelihood_gradients():
    counts, logits, log_library, g = minibatch(n_cells=4, n_genes=7, n_samples=2, seed=1)
    counts[0] = torch.tensor([0.0, 200, 0, 0, 700, 100, 0], dtype=F64)
    log_library = counts.sum(-1).clamp(min=1).log()
    logits.requires_grad_()
    for log_theta in (torch.randn(7, generator=g, dtype=F64), torch.randn(2, 4, 7, generator=g, dtype=F64)):
        log_theta.requires_grad_()
        assert torch.autograd.gradcheck(lambda h, lt: nb_log_likelihood(counts, h, log_library, lt), (logits, log_theta))


def test_per_cell_likelihood_gradients_match_dense_for_huge_counts():
    counts, logits, log_library, g = minibatch(n_cells=4, n_genes=7, n_samples=2, seed=2)
    counts[0] = torch.tensor([0.0, 2e5, 0, 0, 7e5, 1e5, 0], dtype=F64)
    log_library = counts.sum(-1).clamp(min=1).log()
    logits.requires_grad_()
    log_theta = torch.randn(7, generator=g, dtype=F64).requires_grad_()
    ours = torch.autograd.grad(nb_log_likelihood(counts, logits, log_library, log_theta).sum(), (logits, log_theta))
    reference = torch.autograd.grad(dense_reference(counts, logits, log_library, log_theta).sum(), (logits, log_theta))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * b.abs().max().item())


def test_float32_per_cell_likelihood_is_finite_and_close_to_float64():
    counts, logits, log_library, _ = minibatch(n_cells=8, n_genes=200, n_samples=2, seed=3)
    log_theta = torch.linspace(*LOG_THETA_RANGE, 200, dtype=F64)
    exact = nb_log_likelihood(counts, logits, log_library, log_theta)
    single = nb_log_likelihood(counts.float(), logits.float(), log_library.float(), log_theta.float())
    assert single.dtype == torch.float32 and torch.isfinite(single).all()
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=1e-4 * exact.abs().max().item())


def test_log_count_normaliser_avoids_float32_cancellation():
    y = torch.arange(1, 50, dtype=torch.float32)
    log_theta = torch.full_like(y, math.log(1e5))
    theta = log_theta.double().exp()
    exact = torch.lgamma(y.double() + theta) - torch.lgamma(theta) - torch.lgamma(y.double() + 1)
    naive = torch.lgamma(y + log_theta.exp()) - torch.lgamma(log_theta.exp()) - torch.lgamma(y + 1)
    assert (naive.double() - exact).abs().max() > 1e-2  # float32 loses the difference of two numbers near 1e6
    assert (log_count_normaliser(y, log_theta).double() - exact).abs().max() < 1e-4  # only the final rounding


def test_compiled_code_runs_the_chunked_likelihood_as_it_is():
    "torch.compile leaves the chunked likelihood (a Python loop) out of the graph: same values and gradients."
    counts, logits, log_library, g = minibatch(dtype=torch.float32)
    log_theta = torch.randn(40, generator=g)
    nonzero = counts.nonzero(as_tuple=True)
    def scaled(h): return 2 * nb_log_likelihood(counts, h.tanh() * 3, log_library, log_theta, nonzero)
    compiled = torch.compile(scaled, backend="aot_eager")
    h = logits.clone().requires_grad_()
    out, reference = compiled(h), scaled(h)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), h)[0], torch.autograd.grad(reference.sum(), h)[0])


# ----------------------------------------------------------------------------------------------------------------------
# ELBO
# ----------------------------------------------------------------------------------------------------------------------

def test_gaussian_pieces_match_torch_distributions():
    g = generator(0)
    mean, logvar, other_mean, other_logvar, x = (torch.randn(5, 7, generator=g, dtype=F64) * 2 for _ in range(5))
    q, p = Normal(mean, (0.5 * logvar).exp()), Normal(other_mean, (0.5 * other_logvar).exp())
    standard = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(kl_standard_normal(mean, logvar), kl_divergence(q, standard).sum(-1))
    torch.testing.assert_close(kl_normal(mean, logvar, other_mean, other_logvar), kl_divergence(q, p).sum(-1))
    torch.testing.assert_close(normal_log_prob(x, mean, logvar), q.log_prob(x).sum(-1))
    torch.testing.assert_close(normal_entropy(logvar), q.entropy().sum(-1))


def test_analytic_kl_and_entropy_match_monte_carlo():
    g = generator(1)
    mean, logvar = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    draws = mean + (0.5 * logvar).exp() * torch.randn(400_000, 3, 4, generator=g, dtype=F64)
    log_q = normal_log_prob(draws, mean, logvar)
    for samples, analytic in ((-log_q, normal_entropy(logvar)),
                              (log_q - normal_log_prob(draws, 0.0, torch.zeros(())), kl_standard_normal(mean, logvar))):
        error = (samples.mean(0) - analytic).abs()
        assert (error <= 4 * samples.std(0) / math.sqrt(len(samples))).all()


def elbo_inputs(n_samples=4, n_cells=5, n_clusters=3, n_x=6, n_w=4, seed=0, far=False):
    g = generator(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)
    x_mean, x_logvar = randn(n_cells, n_x), randn(n_cells, n_x)
    return dict(
        log_likelihood=-randn(n_samples, n_cells).abs() * 100,
        x=x_mean + (0.5 * x_logvar).exp() * randn(n_samples, n_cells, n_x), x_mean=x_mean, x_logvar=x_logvar,
        w_mean=randn(n_cells, n_w), w_logvar=randn(n_cells, n_w),
        prior_mean=randn(n_samples, n_cells, n_clusters, n_x) * (100 if far else 1),
        prior_logvar=(randn(n_samples, n_cells, n_clusters, n_x) - (8 if far else 0)).clamp(*LOGVAR_RANGE),
        log_pi=torch.log_softmax(randn(n_clusters), 0),
    )


@pytest.mark.parametrize("n_clusters", [1, 2, 5, 20])
@pytest.mark.parametrize("far", [False, True])
def test_four_terms_sum_to_marginal_form(n_clusters, far):
    inputs = elbo_inputs(n_clusters=n_clusters, far=far, seed=n_clusters)
    terms = elbo_terms(**inputs)
    for name in TERMS:
        assert terms[name].shape == (5,) and torch.isfinite(terms[name]).all()
    assert terms["proba"].shape == (5, n_clusters)
    torch.testing.assert_close(terms["proba"].sum(-1), torch.ones(5, dtype=F64))
    assert (terms["kl_z"] >= -1e-12).all()
    total = sum(terms[name] for name in TERMS)
    torch.testing.assert_close(total, neg_elbo_marginal(**inputs), rtol=1e-10, atol=1e-8)


def test_single_component_is_a_plain_vae():
    inputs = elbo_inputs(n_clusters=1)
    terms = elbo_terms(**inputs)
    assert torch.equal(terms["kl_z"], torch.zeros(5, dtype=F64))
    assert torch.equal(terms["proba"], torch.ones(5, 1, dtype=F64))
    expected = (-normal_log_prob(inputs["x"], inputs["prior_mean"][:, :, 0], inputs["prior_logvar"][:, :, 0]).mean(0)
                - normal_entropy(inputs["x_logvar"]))
    torch.testing.assert_close(terms["cond"], expected)


def test_surrogate_is_the_papers_formula_and_differs_from_exact():
    inputs = elbo_inputs(n_clusters=3)
    terms = elbo_terms(**inputs, conditional_prior="surrogate")
    log_r = torch.log_softmax(inputs["log_pi"] + normal_log_prob(inputs["x"].unsqueeze(-2), inputs["prior_mean"],
                                                                  inputs["prior_logvar"]), -1)
    kl = kl_normal(inputs["x_mean"][:, None], inputs["x_logvar"][:, None], inputs["prior_mean"], inputs["prior_logvar"])
    torch.testing.assert_close(terms["cond"], (log_r.exp() * kl).sum(-1).mean(0))
    torch.testing.assert_close(surrogate_cond(log_r, inputs["x_mean"], inputs["x_logvar"], inputs["prior_mean"],
                                              inputs["prior_logvar"]), terms["cond"])
    assert not torch.allclose(terms["cond"], elbo_terms(**inputs)["cond"])
    with pytest.raises(ValueError, match="conditional_prior"):
        elbo_terms(**inputs, conditional_prior="paper")


def test_loss_thresholds_the_minibatch_mean_of_kl_z():
    def terms(kl_z):
        return dict(rec=torch.tensor([100.0, 120.0]), kl_w=torch.tensor([3.0, 5.0]),
                    kl_z=torch.tensor(kl_z, requires_grad=True), cond=torch.tensor([7.0, 9.0]))

    below = terms([0.1, 2.0])  # mean 1.05: a per-cell threshold of 1 would change the first cell, the mean one does not
    total, report = loss(below, kl_z_threshold=1.0)
    total.backward()
    assert total.item() == pytest.approx(110 + 4 + 1.05 + 8)
    torch.testing.assert_close(below["kl_z"].grad, torch.tensor([0.5, 0.5]))
    assert set(report) == {*TERMS, "neg_elbo"}
    assert report["neg_elbo"].item() == pytest.approx(total.item())

    gated = terms([0.1, 2.0])
    total, report = loss(gated, kl_z_threshold=1.5)
    total.backward()
    assert total.item() == pytest.approx(110 + 4 + 1.5 + 8)
    assert torch.equal(gated["kl_z"].grad, torch.zeros(2))
    assert report["kl_z"].item() == pytest.approx(1.05)

    total, _ = loss(terms([0.1, 2.0]), kl_weight=0.25)
    assert total.item() == pytest.approx(110 + 0.25 * (4 + 1.05 + 8))


# ----------------------------------------------------------------------------------------------------------------------
# GMVAEModule
# ----------------------------------------------------------------------------------------------------------------------

SMALL = dict(n_x=5, n_w=3, encoder_hidden=(32, 16), decoder_hidden=(16, 32), beta_hidden=(16,))


def counts_and_batch(n_cells=16, n_genes=50, n_batches=3, seed=0):
    "Poisson counts with a 10⁶-UMI cell, an all-zero gene and an empty cell."
    g = generator(seed)
    counts = torch.poisson(torch.rand(n_cells, n_genes, generator=g) ** 4 * 10, generator=g)
    counts[0] = torch.poisson(torch.full((n_genes,), 1e6 / n_genes), generator=g)
    counts[:, 5] = 0
    counts[3] = 0
    return counts, torch.randint(0, n_batches, (n_cells,), generator=g)


class ReferenceReshapeModule(GMVAEModule):
    "The reference implementation's layout bug: β's (M, B, K·2·n_x) output reshaped to (K, M, B, ·)."

    def prior(self, w):
        params = self.beta(w)
        n_samples, n_cells = params.shape[:2]
        params = params.reshape(self.n_clusters, n_samples, n_cells, 2, self.n_x).movedim(0, 2)
        mean, logvar = params.unbind(-2)
        return mean, logvar.clamp(*LOGVAR_RANGE)


def test_forward_shapes_and_state():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL)
    out = module(counts, batch, n_samples=7, generator=generator(1))
    assert set(out) == {*TERMS, "proba"}
    for name in TERMS:
        assert out[name].shape == (16,)
    assert out["proba"].shape == (16, 4)
    posterior = module.encode(counts, batch)
    assert {k: tuple(v.shape) for k, v in posterior.items()} == dict(x_mean=(16, 5), x_logvar=(16, 5),
                                                                      w_mean=(16, 3), w_logvar=(16, 3))
    logits, log_theta = module.decode(posterior["x_mean"], batch)
    assert logits.shape == (16, 50) and log_theta.shape == (50,)
    prior_mean, prior_logvar = module.prior(torch.zeros(2, 16, 3))
    assert prior_mean.shape == prior_logvar.shape == (2, 16, 4, 5)
    state = module.state_dict()
    assert state["library_target"].item() == 1e4
    restored = GMVAEModule(50, 3, n_clusters=4, **SMALL, library_target=1.0)
    restored.load_state_dict(state)
    assert restored.library_target.item() == 1e4


def test_blog_preset_matches_design_and_defaults_are_the_documented_ones():
    "The preset settings='blog' is DESIGN §4's architecture; the defaults are the package's (nbs/05_modules.ipynb)."
    from gmvae_nb.model import SETTINGS
    linear = lambda seq: [(m.in_features, m.out_features) for m in seq.modules() if isinstance(m, torch.nn.Linear)]
    blog = GMVAEModule(n_genes=2000, n_batches=4, **SETTINGS["blog"]["module"])
    assert linear(blog.encoder) == [(2000, 300), (300, 250)]
    assert (blog.x_head.out_features, blog.w_head.out_features) == (160, 120)
    assert linear(blog.beta) == [(60, 300), (300, 2 * 20 * 80)]
    assert linear(blog.decoder) == [(84, 250), (250, 300)]
    assert (blog.logits_head.in_features, blog.logits_head.out_features) == (300, 2000)
    block = [type(m).__name__ for m in blog.decoder][:4]
    assert block == ["Linear", "GELU", "LayerNorm", "Dropout"] and blog.decoder[3].p == 0.05
    assert blog.log_theta.shape == (2000,) and not isinstance(blog.pi_logits, torch.nn.Parameter)
    default = GMVAEModule(n_genes=2000, n_batches=4)
    assert linear(default.encoder) == [(2000, 128)] and linear(default.decoder) == [(14, 128)]
    assert (default.x_head.out_features, default.w_head.out_features) == (20, 10)
    assert linear(default.beta) == [(5, 128), (128, 2 * 20 * 10)] and default.decoder[3].p == 0.1


def test_same_generator_seed_same_result():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL).eval()
    with torch.no_grad():
        a = module(counts, batch, n_samples=3, generator=generator(5))
        b = module(counts, batch, n_samples=3, generator=generator(5))
    for name in a:
        assert torch.equal(a[name], b[name])


@pytest.mark.parametrize("options", [dict(), dict(dispersion="gene-batch"), dict(dispersion="cell", encode_batch=True),
                                     dict(conditional_prior="surrogate", learn_pi=True)])
def test_permuting_cells_permutes_outputs(options):
    counts, batch = counts_and_batch()
    assert_cellwise(GMVAEModule(50, 3, n_clusters=4, **SMALL, **options), counts, batch)


def test_reference_reshape_bug_fails_the_layout_property():
    counts, batch = counts_and_batch()
    torch.manual_seed(0)
    buggy = ReferenceReshapeModule(50, 3, n_clusters=4, **SMALL)
    with pytest.raises(AssertionError, match="not cell-wise"):
        assert_cellwise(buggy, counts, batch)
    assert_cellwise(ReferenceReshapeModule(50, 3, n_clusters=1, **SMALL), counts, batch)  # harmless at K = 1


def test_single_cluster_module_is_a_plain_vae():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=1, learn_pi=True, **SMALL).double().eval()
    noise = module.sample_noise(16, 5, generator(3))
    with torch.no_grad():
        out = module(counts.double(), batch, noise=noise)
        posterior = module.encode(counts.double(), batch)
        w = posterior["w_mean"] + (0.5 * posterior["w_logvar"]).exp() * noise[..., 5:]
        x = posterior["x_mean"] + (0.5 * posterior["x_logvar"]).exp() * noise[..., :5]
        prior_mean, prior_logvar = module.prior(w)
    assert torch.equal(out["kl_z"], torch.zeros(16, dtype=F64))
    assert torch.equal(out["proba"], torch.ones(16, 1, dtype=F64))
    expected = -normal_log_prob(x, prior_mean[..., 0, :], prior_logvar[..., 0, :]).mean(0) \
        - normal_entropy(posterior["x_logvar"])
    torch.testing.assert_close(out["cond"], expected)


def test_module_terms_sum_to_marginal_elbo():
    counts, batch = counts_and_batch()
    counts = counts.double()
    module = GMVAEModule(50, 3, n_clusters=6, learn_pi=True, **SMALL).double().eval()
    with torch.no_grad():
        module.pi_logits.normal_(generator=generator(4))
    noise = module.sample_noise(16, 4, generator(2))
    with torch.no_grad():
        out = module(counts, batch, noise=noise)
        posterior = module.encode(counts, batch)
        x = posterior["x_mean"] + (0.5 * posterior["x_logvar"]).exp() * noise[..., :5]
        w = posterior["w_mean"] + (0.5 * posterior["w_logvar"]).exp() * noise[..., 5:]
        logits, log_theta = module.decode(x, batch)
        log_likelihood = dense_reference(counts, logits, counts.sum(-1).clamp(min=1).log(), log_theta)
        prior_mean, prior_logvar = module.prior(w)
        marginal = neg_elbo_marginal(log_likelihood, x, **posterior, prior_mean=prior_mean,
                                     prior_logvar=prior_logvar, log_pi=module.log_pi)
    torch.testing.assert_close(sum(out[name] for name in TERMS), marginal, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(dispersion="gene-batch"), dict(dispersion="cell"),
                                     dict(conditional_prior="surrogate", learn_pi=True, encode_batch=True)])
def test_extreme_counts_give_finite_terms_and_gradients(options):
    counts, batch = counts_and_batch()
    counts[1, :10] = 5e4  # and a cell with a few enormous genes
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL, **options)
    out = module(counts, batch, n_samples=2, generator=generator(0))
    total, _ = loss(out)
    total.backward()
    assert all(torch.isfinite(out[name]).all() for name in out)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_normalized_expression_is_batch_corrected():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL).eval()
    expression = module.normalized_expression(counts, batch, references=[1])
    assert expression.shape == (1, 16, 50)
    torch.testing.assert_close(expression.sum(-1), torch.ones(1, 16), rtol=1e-5, atol=0)
    # with the batch only in the decoder, relabelling the cells' own batches changes nothing
    torch.testing.assert_close(module.normalized_expression(counts, (batch + 1) % 3, references=[1]), expression)
    assert not torch.allclose(module.normalized_expression(counts, batch, references=[2]), expression)
    # each cell's own batch is the reference of its own index
    torch.testing.assert_close(module.normalized_expression(counts, batch), module.normalized_expression(counts, batch, [batch]))


def test_normalized_expression_is_cellwise():
    "Permuting the cells (and their draws) permutes the compositions: a cell's ρ depends on its counts, batch and draw alone."
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL).double().eval()
    draws = torch.randn(3, 16, SMALL["n_x"], generator=generator(0), dtype=torch.float64)
    order = torch.randperm(16, generator=generator(1))
    expression = module.normalized_expression(counts.double(), batch, [batch, 2], draws)
    permuted = module.normalized_expression(counts.double()[order], batch[order], [batch[order], 2], draws[:, order])
    torch.testing.assert_close(permuted, expression[:, order], rtol=1e-12, atol=1e-12)


def test_compiled_elbo_matches_eager():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL).eval()
    noise, nonzero = module.sample_noise(16, 2, generator(0)), counts.nonzero(as_tuple=True)
    compiled = torch.compile(module.elbo, backend="aot_eager")
    out, reference = compiled(counts, batch, noise, nonzero), module.elbo(counts, batch, noise, nonzero)
    for name in reference:
        torch.testing.assert_close(out[name], reference[name])


@pytest.mark.parametrize("bad, message", [
    (dict(dispersion="per-gene"), "dispersion"),
    (dict(conditional_prior="paper"), "conditional_prior"),
    (dict(n_clusters=0), "n_clusters"),
    (dict(library_target=0.0), "library_target"),
])
def test_bad_configuration_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        GMVAEModule(50, 3, **bad)


def test_bad_inputs_are_named():
    counts, batch = counts_and_batch()
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL)
    with pytest.raises(ValueError, match=r"\(cells, 50\)"):
        module(counts[:, :40], batch)
    with pytest.raises(ValueError, match="LongTensor"):
        module(counts, batch.float())
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        module(counts, batch + 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        module.normalized_expression(counts, batch, references=[7])
