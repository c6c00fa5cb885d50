"""Training speed of the GMVAE against the matrix-product bound of the same machine.

For each setting (genes G, Monte Carlo samples M) at the blog's architecture (n_x 80, n_w 60, K 20,
encoder G-300-250, decoder (80+S)-250-300-G, beta 60-300-3200, minibatch 128), this

1. times a training epoch exactly as users run it (`gmvae_nb.train.fit_module` on a sparse CSR matrix of
   realistic counts: minibatches sliced and densified, forward, backward, Adam; the second epoch, after the
   allocator and the caches have warmed up) -> cells/s;
2. records the shape of every matrix product of one step (forward and backward) with a dispatch mode,
   counts their FLOPs, and times `torch.matmul`/`addmm` alone at exactly those shapes on this machine:
   the sum is the matrix-product bound of one step, the time the step would take if everything but the
   matrix products were free;
3. prints efficiency = bound / measured step time (the issue's target: >= 70% at G = 13,431, M = 10).

    .venv/bin/python benchmarks/train_speed.py                  # G in {2000, 13431}, M in {10, 1}
    .venv/bin/python benchmarks/train_speed.py --genes 2000 --samples 10 --steps 5
    .venv/bin/python benchmarks/train_speed.py --samples 1 --dispersions gene gene-batch   # θ_g against θ_sg, same run
"""
import argparse
import resource
import time
from collections import Counter

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gmvae_nb.elbo import loss as elbo_loss
from gmvae_nb.model import SETTINGS
from gmvae_nb.modules import DISPERSIONS, GMVAEModule
from gmvae_nb.train import TrainConfig, fit_module, reused_heap

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


def minibatch(n_cells: int, n_genes: int, n_batches: int, density: float, seed: int):
    "A dense minibatch of NB-like counts with about `density` nonzeros, its batches and nonzero indices."
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.85, 1 / 2.0, n_genes) * density * 4
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + means[None, :] * rng.lognormal(0, 0.5, (n_cells, 1))))
    counts = torch.as_tensor(counts, dtype=torch.float32)
    counts[counts.sum(1) == 0, 0] = 1.0
    return counts, torch.as_tensor(rng.integers(0, n_batches, n_cells)), counts.nonzero(as_tuple=True)


class MatmulShapes(TorchDispatchMode):
    "Records (op, shapes) of every matrix product dispatched while active."
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.calls[(func, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))] += 1
        return func(*args, **(kwargs or {}))


def flops(func, shapes) -> int:
    if func is torch.ops.aten.bmm.default:
        (b, m, k), (_, _, n) = shapes
        return 2 * b * m * k * n
    (m, k), (_, n) = shapes[-2:]
    return 2 * m * k * n


def time_matmul(func, shapes, repeats: int) -> float:
    "Seconds per call of the matrix product `func` at `shapes`, timed alone."
    args = [torch.randn(s) for s in shapes]
    func(*args)
    start = time.perf_counter()
    for _ in range(repeats): func(*args)
    return (time.perf_counter() - start) / repeats


def step(module, optimizer, counts, batch, nonzero, n_samples, generator):
    noise = module.sample_noise(len(counts), n_samples, generator)
    objective, _ = elbo_loss(module.elbo(counts, batch, noise, nonzero))
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()


def epoch_seconds(module, n_genes: int, n_samples: int, steps: int, batch_size: int, n_batches: int) -> float:
    "Seconds of the second of two training epochs of `fit_module` over `steps` minibatches of realistic counts."
    counts, batch, _ = minibatch(steps * batch_size, n_genes, n_batches, density=0.09, seed=2)
    config = TrainConfig(max_epochs=2, batch_size=batch_size, n_samples=n_samples)
    history = fit_module(module, sp.csr_matrix(counts.numpy()), batch.numpy(), config=config, device="cpu", progress=False)
    return float(history["seconds"].iloc[-1])


def bench(n_genes: int, n_samples: int, steps: int, batch_size: int = 128, n_batches: int = 13, dispersion: str = "gene") -> dict:
    torch.manual_seed(0)
    module = GMVAEModule(n_genes=n_genes, n_batches=n_batches, n_clusters=20, dispersion=dispersion,
                         **SETTINGS["blog"]["module"]).train()  # the blog's architecture
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    counts, batch, nonzero = minibatch(batch_size, n_genes, n_batches, density=0.09, seed=1)
    generator = torch.Generator().manual_seed(0)
    with MatmulShapes() as recorder:
        step(module, optimizer, counts, batch, nonzero, n_samples, generator)
    seconds = epoch_seconds(module, n_genes, n_samples, steps, batch_size, n_batches) / steps
    total_flops = sum(flops(f, s) * n for (f, s), n in recorder.calls.items())
    with reused_heap():  # the memory settings of training: the matrix products' outputs come from a warm heap too
        bound = sum(time_matmul(f, s, repeats=max(2, steps)) * n for (f, s), n in recorder.calls.items())
    return {"dispersion": dispersion, "G": n_genes, "M": n_samples, "s/step": seconds, "cells/s": batch_size / seconds,
            "GFLOP/step": total_flops / 1e9, "matmul bound s/step": bound,
            "matmul GFLOP/s": total_flops / bound / 1e9, "bound cells/s": batch_size / bound,
            "efficiency": bound / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 13431])
    parser.add_argument("--samples", type=int, nargs="+", default=[10, 1])
    parser.add_argument("--steps", type=int, default=8, help="minibatches per timed epoch")
    parser.add_argument("--dispersions", nargs="+", default=["gene"], choices=DISPERSIONS, help="each is timed at every G and M")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ["dispersion", "G", "M", "s/step", "cells/s", "GFLOP/step", "matmul GFLOP/s", "matmul bound s/step", "bound cells/s", "efficiency"]
    print(" | ".join(header))
    for g in args.genes:
        for m in args.samples:
            for dispersion in args.dispersions:
                row = bench(g, m, args.steps, dispersion=dispersion)
                print(" | ".join(f"{row[h]:.3g}" if isinstance(row[h], float) else str(row[h]) for h in header), flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
