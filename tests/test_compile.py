"""The package under `torch.compile`, as `TrainConfig(compile=True)` runs it: the chunked likelihood, which compiled
code calls as it is (a graph break), and the module's `elbo` give the eager values and gradients.

Here rather than in the notebooks: dynamo keeps what it compiles in the globals of the compiled function, here a
notebook's namespace, and cleaning it up after the kernel has cleared that namespace prints a KeyError's traceback
at the end of every notebook run."""
import pytest
import torch

from gmvae_nb.distributions import nb_log_likelihood
from gmvae_nb.modules import GMVAEModule

SMALL = dict(n_x=5, n_w=3, encoder_hidden=(32, 16), decoder_hidden=(16, 32), beta_hidden=(16,))


@pytest.fixture
def minibatch():
    "Poisson counts (16 cells × 50 genes) with a 10⁶-UMI cell, an all-zero gene and an empty cell, and 3 batches."
    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.rand(16, 50, generator=g) ** 4 * 10, generator=g)
    counts[0] = torch.poisson(torch.full((50,), 1e6 / 50), generator=g)
    counts[:, 5] = 0
    counts[3] = 0
    return counts, torch.randint(0, 3, (16,), generator=g)


def test_compiled_code_runs_the_chunked_likelihood_as_it_is(minibatch):
    counts, _ = minibatch
    g = torch.Generator().manual_seed(1)
    logits, log_theta = torch.randn(3, 16, 50, generator=g), torch.randn(50, generator=g)
    log_library, nonzero = counts.sum(-1).clamp(min=1).log(), counts.nonzero(as_tuple=True)
    def scaled(h): return 2 * nb_log_likelihood(counts, h.tanh() * 3, log_library, log_theta, nonzero)
    h = logits.clone().requires_grad_()
    out, reference = torch.compile(scaled, backend="aot_eager")(h), scaled(h)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), h)[0], torch.autograd.grad(reference.sum(), h)[0])


def test_compiled_elbo_matches_eager(minibatch):
    counts, batch = minibatch
    module = GMVAEModule(50, 3, n_clusters=4, **SMALL).eval()
    noise, nonzero = module.sample_noise(16, 2, torch.Generator().manual_seed(0)), counts.nonzero(as_tuple=True)
    compiled = torch.compile(module.elbo, backend="aot_eager")
    out, reference = compiled(counts, batch, noise, nonzero), module.elbo(counts, batch, noise, nonzero)
    assert set(out) == set(reference)
    for name in reference:
        torch.testing.assert_close(out[name], reference[name])
