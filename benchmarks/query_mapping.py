"""Cells of a batch the model was not trained on: its clusters (`predict`) and its embedding after `map_query`.

    .venv/bin/python benchmarks/query_mapping.py                          # multiome cite cellbench default, seeds 0 1 2
    .venv/bin/python benchmarks/query_mapping.py --datasets cellbench --seeds 0

For each data set and seed (`quality.load`: the data split with the seed), the last batch is the query. A model
trained with the defaults on the other batches' cells (`reference`) gives the query's clusters and, after
`map_query`, their embedding; a model trained with the defaults on every cell (`all cells`) is what the query is
measured against. Printed per run: the ARI of the query cells' clusters with their labels under both models; the
label-transfer accuracy (each cluster named by the majority label of its training-batch cells, the query cells given
their cluster's name); and the mixing of the query with the training batches in the joint embedding (`evaluate` on all
cells: batch ASW, kBET, iLISI, best-Leiden NMI) for the reference model without the query's maps (its posterior means,
`align_batches=False`), with them (`map_query`), and for the model of all cells.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import load  # noqa: E402

SCORES = ("asw_batch", "kbet_per_label", "ilisi", "nmi_leiden_best")


def transferred(clusters: np.ndarray, labels: np.ndarray, training: np.ndarray) -> np.ndarray:
    "Every cell's label as its cluster's majority label among the `training` cells (NaN for a cluster without any)."
    names = pd.crosstab(clusters[training], labels[training]).idxmax(axis=1)
    return pd.Series(clusters).map(names).to_numpy()


def mixing(adata, x: np.ndarray) -> dict[str, float]:
    from gmvae_nb.metrics import evaluate
    scored = adata.copy()
    scored.obsm["X_joint"] = x
    scores = evaluate(scored, "X_joint", cluster_key=None)
    return {name: scores[name] for name in SCORES}


def run(name: str, seed: int) -> dict:
    from sklearn.metrics import adjusted_rand_score
    from gmvae_nb.model import GMVAE
    adata = load(name, seed)
    n_clusters = adata.obs["cell_type"].nunique()
    query_batch = adata.obs["batch"].cat.categories[-1]
    is_query = (adata.obs["batch"] == query_batch).to_numpy()
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    reference.obs["batch"] = reference.obs["batch"].cat.remove_unused_categories()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    started = time.perf_counter()
    model = GMVAE(reference, n_clusters=n_clusters, seed=seed).fit(progress=False)
    seconds = time.perf_counter() - started
    clusters = np.empty(adata.n_obs, int)
    clusters[~is_query], clusters[is_query] = model.predict(reference), model.predict(query)
    unaligned = np.empty((adata.n_obs, model.module.n_x), np.float32)
    unaligned[~is_query], unaligned[is_query] = model.get_latent(reference), model.get_latent(query, align_batches=False)
    mapped = unaligned.copy()
    mapped[is_query] = model.map_query(query).get_latent(query)
    everything = GMVAE(adata, n_clusters=n_clusters, seed=seed).fit(progress=False)
    all_clusters = everything.predict()
    row = dict(data=name, seed=seed, query=query_batch, query_cells=int(is_query.sum()), reference_cells=int((~is_query).sum()),
               reference_fit_s=round(seconds, 1),
               ari_query_reference=adjusted_rand_score(labels[is_query], clusters[is_query]),
               ari_query_all_cells=adjusted_rand_score(labels[is_query], all_clusters[is_query]),
               transfer_reference=np.mean(transferred(clusters, labels, ~is_query)[is_query] == labels[is_query]),
               transfer_all_cells=np.mean(transferred(all_clusters, labels, ~is_query)[is_query] == labels[is_query]))
    for label, x in (("unaligned", unaligned), ("mapped", mapped), ("all_cells", everything.get_latent())):
        row |= {f"{score}_{label}": value for score, value in mixing(adata, x).items()}
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["multiome", "cite", "cellbench", "default"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="query_mapping.csv")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            rows.append(run(name, seed))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    columns = ["ari_query_reference", "ari_query_all_cells", "transfer_reference", "transfer_all_cells"] + [
        f"{score}_{label}" for score in SCORES for label in ("unaligned", "mapped", "all_cells")]
    print("\nmedians over seeds:")
    print(table.groupby("data", sort=False)[columns].median().round(3).T.to_string())


if __name__ == "__main__":
    main()
