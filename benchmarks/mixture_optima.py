"""Is the labels' partition the best optimum of a K-component mixture on the model's embedding, or only one of them?

For each run of a finished sweep at one K (by default the number of labelled groups), on all cells of the sweep's
data: the embedding `get_latent()` (posterior means of x, batches aligned), then

- `label_classes`: each cell in the class of highest density under Gaussians with the labels' means,
  covariances and shares, no EM: what a K-component Gaussian mixture placed on the labels scores;
- `labels_em`: EM (scikit-learn's `GaussianMixture`) started there, its ARI and its mean log-likelihood
  per cell;
- `kmeans_em`: the same EM from scikit-learn's own k-means start with `--starts` seeds, their ARIs and
  log-likelihoods, and `beat_labels`, how many of those starts end at a higher likelihood than the labels' start (by more than
  `TIE`);
- `own`: the model's own clusters (`predict`), and `own_em`, EM started at them (one component per cluster used):
  where their partition lies among the mixture's optima.

Where the labels' start ends at the highest likelihood, a mixture fitted by maximum likelihood can find the labels'
groups, and restarts chosen by likelihood would; where k-means' starts end higher while scoring a lower ARI, the
mixture's likelihood prefers another partition (large types divided, small ones merged) and no optimiser would pick
the labels'. A diagonal Gaussian mixture on the posterior means stands in for the model's prior, whose components
are diagonal Gaussians in x given w: the comparison is between optima, not a refit of the model. Through w a
component could take a correlated shape; `--covariance full` asks the same question of mixtures with a full
covariance per component, the most such shapes could give.

    .venv/bin/python benchmarks/mixture_optima.py sweeps/cite            # K = the labelled groups
    .venv/bin/python benchmarks/mixture_optima.py sweeps/cite -K 10 --starts 5
    .venv/bin/python benchmarks/mixture_optima.py sweeps/cite --covariance full
"""
import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

TIE = 1e-3  # nats per cell, EM's stopping tolerance (scikit-learn's `tol`): two fits closer than this are at one optimum
FLOOR = 1e-3  # every component's variances are raised by this share of the mean variance of x (a type of one cell, or two alike, would collapse)


def variance_floor(x: np.ndarray) -> float:
    "What every component's variances are raised by: `FLOOR` times the mean variance of `x` (EM's `reg_covar`)."
    return FLOOR * float(x.var(0).mean())


COVARIANCES = ("diag", "full")  # the mixtures' covariances: scikit-learn's `covariance_type`


def label_gaussians(x: np.ndarray, codes: np.ndarray, n_groups: int, covariance: str = "diag"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "Means, covariances and shares of the groups `codes` of `x`: variances (n_groups, d) with `covariance` 'diag', matrices (n_groups, d, d) with 'full'. A group too small to estimate its own (under 3 cells; under d + 2 with 'full') takes the pooled ones; every variance is raised by `variance_floor`."
    full = covariance == "full"
    def moments(values: np.ndarray) -> np.ndarray: return np.atleast_2d(np.cov(values.T, bias=True)) if full else values.var(0)
    enough = x.shape[1] + 2 if full else 3
    floor = variance_floor(x) * (np.eye(x.shape[1]) if full else 1)
    means = np.stack([x[codes == g].mean(0) for g in range(n_groups)])
    covariances = np.stack([moments(x[codes == g]) if (codes == g).sum() >= enough else moments(x) for g in range(n_groups)])
    return means, covariances + floor, np.bincount(codes, minlength=n_groups) / len(codes)


def log_densities(x: np.ndarray, means: np.ndarray, covariances: np.ndarray, shares: np.ndarray) -> np.ndarray:
    "(cells, groups) log of each group's share times its Gaussian density at each cell (`label_gaussians`' output)."
    if covariances.ndim == 2:
        log_density = -0.5 * (((x[:, None] - means) ** 2) / covariances + np.log(2 * np.pi * covariances)).sum(-1)
    else:
        from scipy.stats import multivariate_normal
        log_density = np.stack([multivariate_normal(mean, cov).logpdf(x) for mean, cov in zip(means, covariances)], -1)
    return log_density.reshape(len(x), len(means)) + np.log(shares)


def em_from(x: np.ndarray, partition: np.ndarray, covariance: str = "diag", max_iter: int = 500):
    "scikit-learn's `GaussianMixture` fitted by EM to `x` from the Gaussians of `partition`'s groups (`label_gaussians`), one component per group, and those Gaussians."
    from sklearn.mixture import GaussianMixture
    if covariance not in COVARIANCES: raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    names, codes = np.unique(partition, return_inverse=True)
    means, covariances, shares = label_gaussians(x, codes, len(names), covariance)
    precisions = 1 / covariances if covariance == "diag" else np.linalg.inv(covariances)
    fit = GaussianMixture(len(names), covariance_type=covariance, max_iter=max_iter, reg_covar=variance_floor(x),
                          weights_init=shares, means_init=means, precisions_init=precisions, random_state=0).fit(x)
    return fit, (means, covariances, shares)


def optima(x: np.ndarray, labels: np.ndarray, starts: int = 5, max_iter: int = 500, covariance: str = "diag",
           own: np.ndarray | None = None) -> dict:
    "ARI and mean log-likelihood of Gaussian mixtures (`covariance` 'diag' or 'full') on `x` with one component per label: placed on the labels, EM from there, and EM from `starts` k-means starts; given the model's `own` clusters, also EM from them (one component per cluster)."
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture
    from_labels, gaussians = em_from(x, labels, covariance, max_iter)
    from_kmeans = [GaussianMixture(from_labels.n_components, covariance_type=covariance, max_iter=max_iter,
                                   reg_covar=from_labels.reg_covar, random_state=seed).fit(x) for seed in range(starts)]
    kmeans_likelihood = np.array([fit.score(x) for fit in from_kmeans])
    found = dict(label_classes=adjusted_rand_score(labels, log_densities(x, *gaussians).argmax(1)),
                 labels_em=adjusted_rand_score(labels, from_labels.predict(x)), labels_em_loglik=from_labels.score(x),
                 kmeans_em=float(np.median([adjusted_rand_score(labels, fit.predict(x)) for fit in from_kmeans])),
                 kmeans_em_loglik=float(np.median(kmeans_likelihood)),
                 kmeans_em_best_loglik=float(kmeans_likelihood.max()),
                 beat_labels=int((kmeans_likelihood > from_labels.score(x) + TIE).sum()), starts=starts)
    if own is not None:
        from_own, _ = em_from(x, own, covariance, max_iter)
        found.update(own_em=adjusted_rand_score(labels, from_own.predict(x)), own_em_loglik=from_own.score(x))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep's folder (SWEEP/data.h5ad with obs['cell_type'], SWEEP/runs/*/model)")
    parser.add_argument("-K", "--n-clusters", type=int, default=None, help="the runs' K (default: the number of labelled groups)")
    parser.add_argument("--starts", type=int, default=5, help="k-means starts of the mixture's EM (default: %(default)s)")
    parser.add_argument("--covariance", choices=COVARIANCES, default="diag",
                        help="the mixtures' covariances: diagonal, as the model's components, or full (default: %(default)s)")
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
                         **optima(np.asarray(model.get_latent(copy=True).obsm["X_gmvae"]), labels, args.starts,
                                  covariance=args.covariance, own=own)))
        print(", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in rows[-1].items()),
              flush=True)
    table = pd.DataFrame(rows).set_index("run")
    print(table.round(3).to_markdown())
    print("\nmedians:", ", ".join(f"{key} {value:.3f}" for key, value in table.median().items()))


if __name__ == "__main__":
    main()
