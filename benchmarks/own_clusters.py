"""The model's own clusters against the labels, K = the number of groups, for settings that a default could take:
`GMVAE(adata, n_clusters=K, seed=s, **model).fit(**training)` for each variant of `VARIANTS`.

Runs every (data set, seed, variant) in its own process, `--workers` at a time with `--threads` each, and prints one
JSON line per run (with the held-out −ELBO per cell of the kept weights, to compare starts without labels) and a table of medians. Recovery uses data seed = model seed (`--recovery-seeds`, as in
`benchmarks/quality.py`); the other sets use data seed 0 and model seeds `--seeds`. `--prepared DIR` reads each data
set from DIR/NAME_SEED.h5ad, as `quality.load` makes it (for a machine without scanpy or ../shared).

    .venv/bin/python benchmarks/own_clusters.py --variants default gmm --workers 1 --threads 2 --seeds 0 1 2 3 4
"""
import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
VARIANTS = {  # name -> (GMVAE's settings, fit's settings)
    "default": ({}, {}),  # three restarts, the third with its mixture started from x (init_mixture="mixed"), compared after 50 epochs
    "choose_at_end": ({}, dict(choose_after=None)),  # the same restarts, each trained to the end before they are compared
    "own_starts": ({}, dict(init_mixture=None)),  # three restarts, all from the networks' own initialisation
    "gmm": ({}, dict(init_mixture="gmm")),  # the mixture restarted from a Gaussian mixture on x after 60 epochs
    "learn_pi": (dict(learn_pi=True), {}),  # π learned: components the data do not need can empty
    "gmm_learn_pi": (dict(learn_pi=True), dict(init_mixture="gmm")),
    "no_warmup": ({}, dict(warmup_epochs=0)),  # the prior terms at full weight from the first step (the default warms up over a quarter of the epochs)
}


def held_out_neg_elbo(model, adata) -> dict:
    "The −ELBO per cell (10 draws) of the validation and of the test cells of `adata`, with the weights `fit` kept."
    terms = model.elbo_terms(adata).sum(axis=1)
    return {f"{part}_neg_elbo": float(terms[(adata.obs["split"] == part).to_numpy()].mean()) for part in ("validation", "test")}


def load_prepared(name: str, data_seed: int, prepared: str | None):
    "Data set `name` of `data_seed` as `quality.load` makes it: read from PREPARED/NAME_SEED.h5ad, or made now without `prepared`."
    if prepared:
        import anndata as ad
        return ad.read_h5ad(Path(prepared) / f"{name}_{data_seed}.h5ad")
    from quality import load
    return load(name, data_seed)


def one(name: str, data_seed: int, seed: int, variant: str, threads: int, device: str, prepared: str | None) -> dict:
    "Fit one model; its own clusters' ARI and NMI against the labels, clusters used, and k-means on x for comparison."
    import numpy as np
    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from gmvae_nb.model import GMVAE
    torch.set_num_threads(threads)
    adata = load_prepared(name, data_seed, prepared)
    labels, K = adata.obs["cell_type"].to_numpy(), adata.obs["cell_type"].nunique()
    started = time.perf_counter()
    settings, training = VARIANTS[variant]
    model = GMVAE(adata, n_clusters=K, seed=seed, **settings).fit(progress=False, device=device, **training)
    seconds = time.perf_counter() - started
    clusters, x = model.predict(), model.get_latent()
    return dict(data=name, data_seed=data_seed, seed=seed, variant=variant, K=K, seconds=round(seconds, 1),
                epochs=len(model.history), kept_start=model.train_config["init_mixture"],
                **held_out_neg_elbo(model, adata), used=int(len(np.unique(clusters))),
                own_ari=adjusted_rand_score(labels, clusters), own_nmi=normalized_mutual_info_score(labels, clusters),
                kmeans_ari=adjusted_rand_score(labels, KMeans(K, n_init=10, random_state=0).fit_predict(x)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["recovery", "cellbench", "cite", "multiome", "default"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recovery-seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--prepared", default=None, help="read NAME_SEED.h5ad files from this folder")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    jobs = [(name, s if name == "recovery" else 0, s, variant, args.threads, args.device, args.prepared)
            for variant in args.variants for name in args.datasets
            for s in (args.recovery_seeds if name == "recovery" else args.seeds)]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(one, *job) for job in jobs]):
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    import pandas as pd
    table = pd.DataFrame(rows)
    medians = table.groupby(["data", "variant"])[["own_ari", "own_nmi", "used", "kmeans_ari", "validation_neg_elbo", "test_neg_elbo", "seconds"]].median()
    medians["runs with own ARI >= 0.9"] = table.groupby(["data", "variant"])["own_ari"].apply(lambda a: int((a >= 0.9).sum()))
    print(medians.round(3).to_string())
