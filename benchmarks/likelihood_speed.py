"""Forward and backward of the NB likelihood (`gmvae_nb.distributions.nb_log_likelihood`) for each form of the dispersion.

A minibatch of 128 cells of realistic counts (about 9% nonzero) from S = 13 batches, at G genes and M samples:

- `gene`: θ_g, one vector (the model's default);
- `gene-batch table`: θ_sg as the (S, G) table with each cell's batch (what `dispersion="gene-batch"` passes);
- `gene-batch per cell`: the same θ_sg looked up per cell first, a (B, G) tensor (what it passed before; the reference).

    .venv/bin/python benchmarks/likelihood_speed.py                 # G in {2000, 13431}, M in {1, 10}
"""
import argparse
import time

import torch

from gmvae_nb.distributions import nb_log_likelihood
from train_speed import minibatch


def milliseconds(run, repeats: int) -> float:
    "Milliseconds per call of `run`, after three calls that warm the allocator and caches."
    for _ in range(3): run()
    start = time.perf_counter()
    for _ in range(repeats): run()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 13431])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("G | M | dispersion | ms (forward + backward) | × gene")
    for n_genes in args.genes:
        counts, batch, nonzero = minibatch(128, n_genes, n_batches=13, density=0.09, seed=1)
        log_library = counts.sum(-1).clamp(min=1).log()
        for n_samples in args.samples:
            g = torch.Generator().manual_seed(0)
            logits = torch.randn(n_samples, len(counts), n_genes, generator=g).requires_grad_()
            per_gene = torch.randn(n_genes, generator=g).requires_grad_()
            table = torch.randn(13, n_genes, generator=g).requires_grad_()
            forms = {"gene": lambda: nb_log_likelihood(counts, logits, log_library, per_gene, nonzero),
                     "gene-batch table": lambda: nb_log_likelihood(counts, logits, log_library, table, nonzero, batch=batch),
                     "gene-batch per cell": lambda: nb_log_likelihood(counts, logits, log_library, table[batch], nonzero)}
            times = {name: milliseconds(lambda: form().sum().backward(), args.repeats) for name, form in forms.items()}
            for name, ms in times.items():
                print(f"{n_genes} | {n_samples} | {name} | {ms:.1f} | {ms / times['gene']:.2f}", flush=True)


if __name__ == "__main__":
    main()
