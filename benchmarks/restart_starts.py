"""Which starts should `fit`'s restarts have? Each restart that `GMVAE(adata, n_clusters=K, seed=SEED).fit()` draws
(`restart_seed(SEED, i)`, i = 0, 1, 2) is trained on its own from both starts — the networks' own initialisation
(`init_mixture=None`) and the mixture fitted to x (`"gmm"`) — and the choice by agreement (`choose_restart`) is then
made afterwards for each combination of starts: three own (`ooo`), three from x (`ggg`), two own and the third from x
(`oog`, `init_mixture="mixed"`), and so on. Prints one line per data set with every run's own-cluster ARI against the
labels and the ARI of the restart each combination keeps, then the recovery simulation's count of data seeds at or
above 0.9. Also records each run's clusters at a few epochs of its training from its mixture's start (`--snapshots`),
with the components they use, to see when the clusters settle and which restart the choice would keep if it were made
then (`fit(choose_after=…)`): for the mixed restarts (`oog`), the final own ARI of the restart chosen from the
clusters after each of those epochs (a restart that stopped earlier takes part with its final clusters). Data as in
`benchmarks/own_clusters.py` (data seed 0; recovery: data seeds `--recovery-seeds`). `--save FILE` pickles every run,
to weigh other choices afterwards.

    .venv/bin/python benchmarks/restart_starts.py --workers 2 --threads 1 --prepared DIR
"""
import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
COMBINATIONS = {"ooo": (None, None, None), "ggg": ("gmm", "gmm", "gmm"), "oog": (None, None, "gmm"),
                "ogg": (None, "gmm", "gmm")}  # the start of restart 0, 1, 2
INIT_EPOCHS = 60  # fit's default init_epochs


def one(name: str, data_seed: int, seed: int, restart: int, start: str | None, threads: int, prepared: str | None,
        snapshots: tuple[int, ...]) -> dict:
    "Restart `restart` of seed `seed`, trained from `start`: its clusters of all cells, and its clusters and own ARI after `snapshots` epochs from its mixture's start."
    import numpy as np
    import torch
    from sklearn.metrics import adjusted_rand_score
    from gmvae_nb.model import GMVAE, restart_seed
    from own_clusters import load_prepared
    torch.set_num_threads(threads)
    adata = load_prepared(name, data_seed, prepared)
    labels, K = adata.obs["cell_type"].to_numpy(), adata.obs["cell_type"].nunique()
    model = GMVAE(adata, n_clusters=K, seed=restart_seed(seed, restart))
    over_training, snapshot_clusters, snapshot_neg_elbo = {}, {}, {}
    epochs_seen = [-(INIT_EPOCHS if start else 0)]  # on_epoch also sees the epochs before a mixture fitted to x

    def snapshot(row: dict):  # the clusters as predict() would give them now, in eval mode, then back to training
        epochs_seen[0] += 1
        if epochs_seen[0] in snapshots:
            clusters = model._clusters(None)
            model.module.train()
            snapshot_clusters[epochs_seen[0]] = np.asarray(clusters)
            over_training[epochs_seen[0]] = round(adjusted_rand_score(labels, clusters), 3)
            snapshot_neg_elbo[epochs_seen[0]] = row.get("validation_neg_elbo", row["train_neg_elbo"])
    model.fit(progress=False, n_init=1, init_mixture=start, init_epochs=INIT_EPOCHS, on_epoch=snapshot)
    clusters = model.predict()
    return dict(name=name, data_seed=data_seed, restart=restart, start=start, clusters=np.asarray(clusters),
                own_ari=adjusted_rand_score(labels, clusters), epochs=len(model.history), over_training=over_training,
                snapshot_clusters=snapshot_clusters, snapshot_neg_elbo=snapshot_neg_elbo, labels=labels)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["recovery", "default", "multiome", "cellbench", "cite"])
    parser.add_argument("--seed", type=int, default=0, help="the model seed whose restarts are trained")
    parser.add_argument("--recovery-seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--snapshots", nargs="+", type=int, default=[10, 20, 30, 50, 75, 100, 150, 200, 300],
                        help="epochs from the mixture's start")
    parser.add_argument("--prepared", default=None, help="read NAME_SEED.h5ad files from this folder")
    parser.add_argument("--save", default=None, help="pickle every run (clusters, snapshots, labels) to this file")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from gmvae_nb.model import choose_restart, restart_agreement
    sets = [(name, s) for name in args.datasets for s in (args.recovery_seeds if name == "recovery" else [0])]
    jobs = [(name, s, args.seed, restart, start, args.threads, args.prepared, tuple(args.snapshots))
            for name, s in sets for start in (None, "gmm") for restart in range(3)]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = {(r["name"], r["data_seed"], r["restart"], r["start"]): r for r in pool.map(one, *zip(*jobs))}
    if args.save:
        import pickle
        Path(args.save).write_bytes(pickle.dumps(runs))
    kept = {combination: [] for combination in COMBINATIONS}
    early = {epochs: [] for epochs in args.snapshots}  # the mixed restarts chosen after `epochs` epochs: (data, final own ARI)
    for name, s in sets:
        line = f"{name}_{s}: own " + " ".join(f"{runs[name, s, i, None]['own_ari']:.3f}" for i in range(3))
        line += " | from x " + " ".join(f"{runs[name, s, i, 'gmm']['own_ari']:.3f}" for i in range(3)) + " | kept:"
        for combination, starts in COMBINATIONS.items():
            members = [runs[name, s, i, start] for i, start in enumerate(starts)]
            agreements = restart_agreement([m["clusters"] for m in members])
            chosen = members[choose_restart([0.0] * len(members), agreements)]  # ties (rare with 3): the first
            kept[combination].append((name, chosen["own_ari"]))
            line += f" {combination} {chosen['own_ari']:.3f}"
        print(line)
        for i, start in product(range(3), (None, "gmm")):
            run = runs[name, s, i, start]
            print(f"    {start or 'own'} start, restart {i}: own ARI over the epochs {run['over_training']}; components used "
                  + ", ".join(f"{e}: {len(set(c))}" for e, c in run["snapshot_clusters"].items()) + f", end: {len(set(run['clusters']))}")
        members = [runs[name, s, i, start] for i, start in enumerate(COMBINATIONS["oog"])]
        for epochs in args.snapshots:
            then = [m["snapshot_clusters"].get(epochs, m["clusters"]) for m in members]  # stopped earlier: its final clusters
            early[epochs].append((name, members[choose_restart([0.0] * 3, restart_agreement(then))]["own_ari"]))
        print("    oog chosen after " + ", ".join(f"{e}: {early[e][-1][1]:.3f}" for e in args.snapshots))
    for chosen, results in [*kept.items(), *((f"oog chosen after {e} epochs", r) for e, r in early.items())]:
        recovery = [ari for name, ari in results if name == "recovery"]
        print(f"{chosen}: recovery {sum(a >= 0.9 for a in recovery)} of {len(recovery)} at or above 0.9; "
              + ", ".join(f"{name} {ari:.3f}" for name, ari in results if name != "recovery"))
