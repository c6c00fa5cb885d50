"""Per-cell inference of a `GMVAE`: the responsibilities and the aligned embedding without the decoder, against the ELBO pass.

The responsibilities E_q r_k need the encoder and the β network only. `predict_proba`, `predict`, the batch alignment
that `fit` ends with, and the aligned `get_latent` compute them that way (`GMVAE._mixture_at`); the reference is the
route they took before, the full per-cell ELBO (`GMVAE._sampled_terms`), whose decoder and NB likelihood run over
every gene at each of the 10 draws. The model is untrained (the cost does not depend on the weights) and built with
the defaults on the `bmmc` simulation:

    .venv/bin/python benchmarks/inference_speed.py                  # 10,000 cells × 13,431 genes, 13 batches, K = 22
    .venv/bin/python benchmarks/inference_speed.py --cells 2000 --threads 1

It prints seconds and cells/s per route, the largest difference between the two routes' responsibilities (they must
be equal), and the peak RSS.
"""
import argparse
import resource
import time

import numpy as np
import torch

from gmvae_nb.model import GMVAE, PREDICT_SAMPLES
from gmvae_nb.simulate import simulate


def timed(run) -> tuple[float, object]:
    "Seconds of one call of `run` (after one untimed call that warms the allocator), and its result."
    run()
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adata = simulate("bmmc", n_cells=args.cells, seed=0)
    model = GMVAE(adata, n_clusters=int(adata.obs["cell_type"].nunique()), seed=0)
    model.batch_alignment = model._fit_batch_alignment(np.arange(adata.n_obs))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {adata.n_obs} cells × {adata.n_vars} genes, "
          f"{len(model.batches)} batches, K = {model.n_clusters}, {PREDICT_SAMPLES} draws per cell")
    routes = {
        "ELBO pass (reference: the route before)": lambda: model._sampled_terms(None, PREDICT_SAMPLES, 1024)[1]["proba"],
        "predict_proba (encoder and β only)": lambda: model.predict_proba(),
        "fit's batch alignment (encoder and β only)": lambda: model._fit_batch_alignment(np.arange(adata.n_obs)),
        "get_latent, aligned (encoder and β only)": lambda: model.get_latent(),
        "get_latent, posterior mean (encoder only)": lambda: model.get_latent(align_batches=False),
    }
    print("route | s | cells/s | × reference")
    results, reference = {}, None
    for name, run in routes.items():
        seconds, results[name] = timed(run)
        reference = reference or seconds  # the first route's
        print(f"{name} | {seconds:.2f} | {adata.n_obs / seconds:,.0f} | {reference / seconds:.1f}")
    difference = np.abs(results["predict_proba (encoder and β only)"] - results["ELBO pass (reference: the route before)"]).max()
    print(f"largest difference between the two routes' responsibilities: {difference:.3g}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
