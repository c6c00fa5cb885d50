"""Is the labels' partition the best optimum of a K-component mixture on the model's embedding, or only one of them?

For each run of a finished sweep at one K (by default the number of labelled groups), on all cells of the sweep's
data: the embedding `get_latent()` (posterior means of x, batches aligned), then

- `label_classes`: each cell in the class of highest density under diagonal Gaussians with the labels' means,
  variances and shares, no EM: what a K-component diagonal Gaussian mixture placed on the labels scores;
- `labels_em`: EM (scikit-learn's `GaussianMixture`, diagonal) started there, its ARI and its mean log-likelihood
  per cell;
- `kmeans_em`: the same EM from scikit-learn's own k-means start with `--starts` seeds, their ARIs and
  log-likelihoods, and `beat_labels`, how many of those starts end at a higher likelihood than the labels' start (by more than
  `TIE`);
- `own`: the model's own clusters (`predict`).

Where the labels' start ends at the highest likelihood, a mixture fitted by maximum likelihood can find the labels'
groups, and restarts chosen by likelihood would; where k-means' starts end higher while scoring a lower ARI, the
mixture's likelihood prefers another partition (large types divided, small ones merged) and no optimiser would pick
the labels'. A diagonal Gaussian mixture on the posterior means stands in for the model's prior (whose component
means also depend on w): the comparison is between optima, not a refit of the model.

    .venv/bin/python benchmarks/mixture_optima.py sweeps/cite            # K = the labelled groups
    .venv/bin/python benchmarks/mixture_optima.py sweeps/cite -K 10 --starts 5
"""
import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

TIE = 1e-3  # nats per cell, EM's stopping tolerance (scikit-learn's `tol`): two fits closer than this are at one optimum
FLOOR = 1e-3  # every component's variances are raised by this share of the mean variance of x (a type of one cell, or two alike, would collapse)


def diagonal_gaussians(x: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "Means, variances and shares (n_groups, …) of the groups `codes` of `x`; a group of fewer than 3 cells takes the pooled variance; every variance is raised by `FLOOR` times the mean pooled one."
    pooled = x.var(0)
    means = np.stack([x[codes == g].mean(0) for g in range(n_groups)])
    variances = np.stack([x[codes == g].var(0) if (codes == g).sum() > 2 else pooled for g in range(n_groups)])
    return means, variances + FLOOR * pooled.mean(), np.bincount(codes, minlength=n_groups) / len(codes)


def optima(x: np.ndarray, labels: np.ndarray, starts: int = 5, max_iter: int = 500) -> dict:
    "ARI and mean log-likelihood of diagonal Gaussian mixtures on `x` with one component per label: placed on the labels, EM from there, and EM from `starts` k-means starts."
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture
    names, codes = np.unique(labels, return_inverse=True)
    means, variances, shares = diagonal_gaussians(x, codes, len(names))
    log_density = -0.5 * (((x[:, None] - means) ** 2) / variances + np.log(2 * np.pi * variances)).sum(-1) + np.log(shares)
    mixture = dict(n_components=len(names), covariance_type="diag", max_iter=max_iter, reg_covar=FLOOR * x.var(0).mean())
    from_labels = GaussianMixture(**mixture, weights_init=shares, means_init=means, precisions_init=1 / variances,
                                  random_state=0).fit(x)
    from_kmeans = [GaussianMixture(**mixture, random_state=seed).fit(x) for seed in range(starts)]
    kmeans_likelihood = np.array([fit.score(x) for fit in from_kmeans])
    return dict(label_classes=adjusted_rand_score(labels, log_density.argmax(1)),
                labels_em=adjusted_rand_score(labels, from_labels.predict(x)), labels_em_loglik=from_labels.score(x),
                kmeans_em=float(np.median([adjusted_rand_score(labels, fit.predict(x)) for fit in from_kmeans])),
                kmeans_em_loglik=float(np.median(kmeans_likelihood)),
                kmeans_em_best_loglik=float(kmeans_likelihood.max()),
                beat_labels=int((kmeans_likelihood > from_labels.score(x) + TIE).sum()), starts=starts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep's folder (SWEEP/data.h5ad with obs['cell_type'], SWEEP/runs/*/model)")
    parser.add_argument("-K", "--n-clusters", type=int, default=None, help="the runs' K (default: the number of labelled groups)")
    parser.add_argument("--starts", type=int, default=5, help="k-means starts of the mixture's EM (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    import anndata as ad
    import torch
    from sklearn.metrics import adjusted_rand_score
    from gmvae_nb.model import GMVAE
    from gmvae_nb.sweep import collect
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="sklearn")
    sweep = Path(args.sweep)
    if not (sweep / "data.h5ad").is_file(): raise SystemExit(f"{sweep} is not a sweep's folder: it has no data.h5ad")
    adata = ad.read_h5ad(sweep / "data.h5ad")
    if "cell_type" not in adata.obs:
        raise SystemExit(f"{sweep / 'data.h5ad'} has no obs['cell_type']: the question needs the labels (a sweep writes them there)")
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    n_labels = len(np.unique(labels))
    k = args.n_clusters or n_labels
    finished = collect(sweep)["n_clusters"]  # the sweep's finished runs, as its report reads them
    runs = [sweep / "runs" / name for name, n_clusters in finished.items()
            if n_clusters == k and (sweep / "runs" / name / "model").is_dir()]
    if not runs: raise SystemExit(f"{sweep / 'runs'} holds no run with a saved model at K = {k}")
    if k != n_labels: print(f"K = {k}; the mixtures on x have one component per label ({n_labels})")
    rows = []
    for run in runs:
        model = GMVAE.load(run / "model", adata.copy())
        own = np.asarray(model.predict(copy=True).obs["gmvae_cluster"])
        rows.append(dict(run=run.name, own=adjusted_rand_score(labels, own), own_used=len(np.unique(own)),
                         **optima(np.asarray(model.get_latent(copy=True).obsm["X_gmvae"]), labels, args.starts)))
        print(", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in rows[-1].items()),
              flush=True)
    table = pd.DataFrame(rows).set_index("run")
    print(table.round(3).to_markdown())
    print("\nmedians:", ", ".join(f"{key} {value:.3f}" for key, value in table.median().items()))


if __name__ == "__main__":
    main()
