"""The responsibilities' floor (`gmvae_nb.elbo.RESPONSIBILITY_FLOOR`) against the exact softmax, in the same run.

A component far from a draw of x gets a responsibility below float32's smallest normal number (1.2e-38), and the
gradients through it to β's output for that component are subnormal too: CPUs compute on such numbers 10-100 times
slower. `elbo_terms` therefore floors the responsibilities at e^-RESPONSIBILITY_FLOOR of the largest. For every data
set, K and seed this fits `GMVAE(adata, n_clusters=K, seed=s).fit(n_jobs=1)` twice in this process, with the floor
(the package as it is) and with the exact softmax (`elbo_terms` called with `responsibility_floor=math.inf`), in
alternating order from one seed to the next, and prints

* the seconds of `fit` (the restarts one by one in this process, so that both run the same code: worker processes
  would import the package afresh, without the exact softmax) and their ratio;
* after the fit, on one training minibatch of the fitted model, the share of subnormal entries in the gradient that
  reaches β's output, and the backward pass's milliseconds (the median of 20);
* the own clusters' ARI against the labels and the ARI between the two fits' clusters (1: the same partition).

Data sets and K as in `benchmarks/quality.py` (its `load`: the split, all real data from ../shared/data).

    .venv/bin/python benchmarks/subnormal_speed.py                                  # CITE at K = 41 and at K = 10, seed 0
    .venv/bin/python benchmarks/subnormal_speed.py --datasets multiome cite --seeds 0 1 2

Run it alone on the machine: two torch processes slow each other.
"""
import argparse
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import DATASETS, load, parse_n_clusters  # noqa: E402

import gmvae_nb.modules  # noqa: E402
from gmvae_nb.elbo import elbo_terms, loss  # noqa: E402
from gmvae_nb.model import GMVAE  # noqa: E402
from gmvae_nb.train import minibatch_terms  # noqa: E402

SOFTMAXES = {"floored": elbo_terms, "exact": functools.partial(elbo_terms, responsibility_floor=math.inf)}


def use_softmax(name: str):
    "Make the module's ELBO take its responsibilities from the softmax `name` of `SOFTMAXES`."
    gmvae_nb.modules.elbo_terms = SOFTMAXES[name]


def subnormal_gradient(model: GMVAE, n_cells: int = 128, repeats: int = 20) -> tuple[float, float]:
    "Share of subnormal entries in the gradient at β's output, and the median milliseconds of the backward pass, on the first `n_cells` training cells of `model` (in training mode, one draw: a training step's minibatch, terms and loss)."
    module, tiny = model.module, torch.finfo(torch.float32).tiny
    train, _ = model._split_indices("split")
    minibatch = next(iter(model._loader(None, n_cells, train[:n_cells])[1]))
    generator, grads, seconds = torch.Generator().manual_seed(0), [], []
    hook = module.beta[-1].register_full_backward_hook(lambda layer, grad_in, grad_out: grads.append(grad_out[0].detach()))
    module.train()
    for _ in range(repeats):
        module.zero_grad(set_to_none=True)
        objective, _ = loss(minibatch_terms(module, minibatch, 1, generator))
        started = time.perf_counter()
        objective.backward()
        seconds.append(time.perf_counter() - started)
    hook.remove()
    module.zero_grad(set_to_none=True)
    module.eval()
    grad = torch.cat([g.flatten() for g in grads])
    subnormal = ((grad != 0) & (grad.abs() < tiny)).double().mean().item()
    return subnormal, 1000 * statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cite"], choices=DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-clusters", nargs="+", default=["cite=41", "cite=10"], metavar="DATASET=K",
                        help="K per data set, a data set may be named more than once (default: CITE at 41 and 10); "
                             "a data set not named: its number of labelled groups")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.metrics import adjusted_rand_score
    ks = {}  # the Ks of each data set named in --n-clusters, in their order
    for item in args.n_clusters:
        for name, k in parse_n_clusters([item]).items(): ks.setdefault(name, []).append(k)
    for name in args.datasets:
        for seed in args.seeds:
            adata = load(name, seed)
            labels = adata.obs["cell_type"].to_numpy()
            for k in ks.get(name) or [adata.obs["cell_type"].nunique()]:
                order = list(SOFTMAXES) if seed % 2 == 0 else list(SOFTMAXES)[::-1]
                row, clusters = {}, {}
                for softmax in order:
                    use_softmax(softmax)
                    model = GMVAE(adata, n_clusters=k, seed=seed)
                    started = time.perf_counter()
                    model.fit(progress=False, n_jobs=1)
                    row[softmax] = time.perf_counter() - started
                    clusters[softmax] = model.predict()
                    share, ms = subnormal_gradient(model)
                    print(f"{name} K={k} seed {seed} {softmax:>7}: fit {row[softmax]:6.1f} s, "
                          f"{len(model.history)} epochs kept, own ARI {adjusted_rand_score(labels, clusters[softmax]):.3f}, "
                          f"subnormal share of β's output gradient {share:.4f}, backward {ms:.2f} ms", flush=True)
                use_softmax("floored")
                print(f"{name} K={k} seed {seed}: floored / exact time {row['floored'] / row['exact']:.3f}, "
                      f"ARI between the two fits {adjusted_rand_score(clusters['floored'], clusters['exact']):.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
