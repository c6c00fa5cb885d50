"""Clustering and batch removal of the GMVAE with its defaults (and the blog preset) against unintegrated PCA and scVI.

    .venv/bin/pip install -c constraints.txt -e ".[scvi]"     # once, for the scVI rows (without it they are left out, and said so)
    .venv/bin/python benchmarks/quality.py                                   # every data set, seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --datasets multiome cellbench --seeds 0 --methods gmvae pca
    .venv/bin/python benchmarks/quality.py --methods gmvae --fit max_epochs=200 --model learn_pi=True  # a candidate default
    .venv/bin/python benchmarks/quality.py --datasets multiome --per-label labels.csv   # kBET and batch ASW per cell type
    .venv/bin/python benchmarks/quality.py --datasets cite multiome --n-clusters cite=10 multiome=7   # at a sweep's recommended K
    .venv/bin/python benchmarks/quality.py --summarise a.csv b.csv    # the tables of earlier runs' rows together, nothing trained
    .venv/bin/python benchmarks/quality.py --fit split_key=unsplit   # as on a user's data without a split column: fit holds out a tenth
    .venv/bin/python benchmarks/quality.py --fit split_key=None      # every cell trained on, no validation

What a user does: `GMVAE(adata, n_clusters=K, seed=s).fit()` with every other setting at its default, K the number of
labelled groups, after `split(adata, seed=s)` (so that the default training sees the train cells, validates on the
validation cells, and the test cells are held out; each seed draws its own split, so that the spread over seeds is
also the spread over which cells train, as on a user's data, where `fit` draws its validation cells with the model's
seed). The baselines see all cells: PCA (30 components of the
log-normalised counts) and scVI (scvi-tools' defaults, its epochs heuristic), seeded with the same s. Each
embedding is scored with `gmvae_nb.metrics.evaluate` on all cells and on the test cells, plus the ARI of Leiden at
resolution 1 on the 15-NN graph (what a scanpy user's default `sc.tl.leiden` gives) and of Leiden at the resolution
that gives K clusters (the fair match for a model asked for K), and, for the GMVAE, the model's own clusters
(`predict`) and how many of its K clusters hold a cell (`components_used`, named when a cluster was one component).

Data sets (all read or made here; the real ones from ../shared/data, never copied):

* `multiome`, `cite`: the two BMMC starter files (500 × 600, 21 types; 600 × 1,000, 41 types; 2 batches each);
* `cellbench`: CellBench RNA mixture, two technologies, 7 groups, 2,000 highly variable genes;
* `default`: the package's `default` simulation preset (2,000 cells × 1,000 genes, 10 types, 4 batches);
* `recovery`: 8 equally frequent, clearly different types, 4 batches (as `tests/test_model.py`), data seed = seed;
* `bmmc10k`: the `bmmc` simulation preset at 10,000 cells, 2,000 highly variable genes (slow: minutes per method);
* `bmmc`, `bmmc_hvg`: the `bmmc` preset at the target's full size (69,249 cells × 13,431 genes; `bmmc_hvg` its 2,000
  highly variable genes), for `restart_processes.py`'s memory figures (hours per method with the defaults).

It prints one row per data set × method × seed as it goes, then the medians over seeds and the issue's checks
(own-cluster ARI against Leiden r=1 on PCA and scVI, best NMI / k-means ARI against the better baseline, batch ASW
and kBET against scVI, training time against scVI), then in how many seeds each check passes against the same
seed's baselines (on 500-600 cells a median of three seeds moves by more than most candidate defaults do), and
writes every row to `--out` (CSV).
"""
import argparse
import ast
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = ("multiome", "cite", "cellbench", "default", "recovery", "bmmc10k", "bmmc", "bmmc_hvg")
SMALL_DATASETS = DATASETS[:5]  # the default run's: seconds to a minute per fit
METHODS = ("gmvae", "blog", "pca", "scvi")
RECOVERY_DATA = dict(n_types=8, n_batches=4, n_cells=2000, n_genes=500, type_weights=(1.0,) * 10, type_de_prob=0.2,
                     type_de_loc=1.5)


def load(name: str, seed: int):
    "The data set `name` (counts in layers['counts'], obs batch and cell_type), split into train/validation/test with `seed`."
    from gmvae_nb.data import load_counts, select_genes, split
    from gmvae_nb.simulate import simulate
    if name == "multiome": adata = load_counts(SHARED / "openproblems_bmmc_multiome_starter.output_rna.h5ad")
    elif name == "cite": adata = load_counts(SHARED / "openproblems_bmmc_cite_starter.output_rna.h5ad")
    elif name == "cellbench": adata = select_genes(load_counts(SHARED / "cellbench_rnamix.h5ad"), n_top_genes=2000)
    elif name == "default": adata = simulate("default", seed=0)
    elif name == "recovery": adata = simulate("default", seed=seed, **RECOVERY_DATA)
    elif name == "bmmc10k": adata = select_genes(simulate("bmmc", n_cells=10_000, seed=0), n_top_genes=2000)
    elif name == "bmmc": adata = simulate("bmmc", seed=0)
    elif name == "bmmc_hvg": adata = select_genes(simulate("bmmc", seed=0), n_top_genes=2000)
    else: raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")
    return split(adata, seed=seed)


def embed(method: str, adata, n_clusters: int, seed: int, fit_settings: dict | None = None,
          model_settings: dict | None = None) -> tuple[str, float, dict]:
    "Train `method` on `adata` (the GMVAE built with `model_settings` and fitted with `fit_settings`, default none); returns the obsm key of its embedding, the training seconds and extra figures."
    started = time.perf_counter()
    if method in ("gmvae", "blog"):
        from gmvae_nb.model import GMVAE
        settings = {} if method == "gmvae" else dict(settings="blog")
        model = GMVAE(adata, n_clusters=n_clusters, seed=seed, **settings, **(model_settings or {}))
        model.fit(progress=False, **(fit_settings or {}))
        seconds = time.perf_counter() - started
        model.get_latent()
        clusters = model.predict()
        return "X_gmvae", seconds, dict(components_used=len(np.unique(clusters)), epochs=len(model.history))
    if method == "pca":
        from gmvae_nb.baselines import pca_baseline
        pca_baseline(adata, n_comps=30, seed=seed)
        return "X_pca_unintegrated", time.perf_counter() - started, {}
    if method == "scvi":
        from gmvae_nb.baselines import scvi_baseline
        scvi_baseline(adata, seed=seed, enable_progress_bar=False)
        return "X_scVI", time.perf_counter() - started, {}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def leiden_ari_at_k(adata, key: str, n_clusters: int) -> dict:
    """ARI with the cell types of Leiden on the 15-NN graph of `obsm[key]` at the resolution (0.1, 0.2, …, 6.0; the
    lowest such) whose number of clusters is closest to `n_clusters`: Leiden asked for as many clusters as the
    GMVAE's K. (The ARI at resolution 1, scanpy's default, is `evaluate`'s `ari_leiden_r1`.)"""
    from gmvae_nb.metrics import exact_neighbors, knn_connectivities, leiden_scores
    graph = knn_connectivities(exact_neighbors(adata.obsm[key], 15))
    table = leiden_scores(graph, adata.obs["cell_type"].astype(str).to_numpy(),
                          resolutions=[round(0.1 * step, 1) for step in range(1, 61)])
    return dict(ari_leiden_at_k=float(table.loc[(table["n_clusters"] - n_clusters).abs().idxmin(), "ari"]))


def score(adata, key: str, own: bool) -> dict:
    "`evaluate` on all cells and on the test cells, with the Leiden ARI at K of `leiden_ari_at_k`."
    from gmvae_nb.metrics import evaluate
    cluster_key = "gmvae_cluster" if own else None
    test = adata[(adata.obs["split"] == "test").to_numpy()]
    row = evaluate(adata, key, cluster_key=cluster_key) | leiden_ari_at_k(adata, key, adata.obs["cell_type"].nunique())
    row |= {f"test_{k}": v for k, v in evaluate(test, key, cluster_key=cluster_key, n_neighbors=min(90, test.n_obs - 1)).items()
            if k in ("ari_own_clusters", "nmi_leiden_best", "ari_kmeans_best", "asw_batch", "kbet_per_label")}
    return row


def per_label(adata, key: str) -> pd.DataFrame:
    """Per cell type of `adata`, on the embedding `obsm[key]`: its cells, its kBET acceptance and batch ASW (the per-type
    values whose means `evaluate` reports as kbet_per_label and asw_batch; NaN where a type is not scored), and the
    connected pieces of its cells' 50-NN connectivity graph, kBET's graph. kBET scores a type 0 when pieces smaller
    than 3·k0 (k0 ≥ 10) hold over a quarter of its cells, so a type of 10–29 cells scores 0 as soon as one of its
    cells is cut off from the rest (`fragmented`)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components
    from gmvae_nb.metrics import KBET_NEIGHBORS, batch_asw, exact_neighbors, kbet_per_label, knn_connectivities
    coordinates = np.asarray(adata.obsm[key])
    labels, batches = (adata.obs[column].astype(str).to_numpy() for column in ("cell_type", "batch"))
    graph = sp.csr_matrix(knn_connectivities(exact_neighbors(coordinates, min(KBET_NEIGHBORS, adata.n_obs - 1))))
    table = pd.DataFrame({"cells": pd.Series(labels).value_counts(), "kbet": kbet_per_label(graph, batches, labels),
                          "asw_batch": batch_asw(coordinates, labels, batches)})
    table["pieces"] = [connected_components(graph[cells][:, cells], connection="strong")[0]
                       for cells in (np.flatnonzero(labels == label) for label in table.index)]
    table["fragmented"] = (table["kbet"] == 0) & (table["pieces"] > 1)
    return table.rename_axis("cell_type").sort_values("cells", ascending=False)


def per_label_summary(labels: pd.DataFrame) -> pd.DataFrame:
    "Per data set and method, medians over seeds of: the types kBET scores, those it scores 0 for fragmentation, and kBET's mean over the others."
    def one_run(run: pd.DataFrame) -> pd.Series:
        scored = run.dropna(subset=["kbet"])
        return pd.Series({"kBET types": len(scored), "fragmented (kBET 0)": int(scored["fragmented"].sum()),
                          "kBET": scored["kbet"].mean(), "kBET without them": scored.loc[~scored["fragmented"], "kbet"].mean()})
    runs = labels.groupby(["dataset", "method", "seed"]).apply(one_run)
    return runs.groupby(["dataset", "method"]).median()


def checks(medians: pd.DataFrame) -> pd.DataFrame:
    "The issue's 'done when' comparisons, one row per data set (medians over seeds)."
    rows = []
    for dataset, by in medians.groupby(level=0):
        m = by.droplevel(0)
        if "gmvae" not in m.index: continue
        g, baselines = m.loc["gmvae"], [b for b in ("pca", "scvi") if b in m.index]
        row = {"data": dataset, "own ARI": g["ari_own_clusters"],
               "Leiden r1 ARI (PCA / scVI)": " / ".join(f"{m.loc[b, 'ari_leiden_r1']:.3f}" for b in baselines),
               "components used / K": f"{g['components_used']:.0f} / {g['n_clusters']:.0f}"}
        if baselines:
            row["own ≥ Leiden r1"] = all(g["ari_own_clusters"] >= m.loc[b, "ari_leiden_r1"] for b in baselines)
            row["Leiden at K ARI (PCA / scVI)"] = " / ".join(f"{m.loc[b, 'ari_leiden_at_k']:.3f}" for b in baselines)
            row["own ≥ Leiden at K"] = all(g["ari_own_clusters"] >= m.loc[b, "ari_leiden_at_k"] for b in baselines)
            row["NMI ≥ best baseline"] = g["nmi_leiden_best"] >= max(m.loc[b, "nmi_leiden_best"] for b in baselines)
            row["k-means ARI ≥ best baseline"] = g["ari_kmeans_best"] >= max(m.loc[b, "ari_kmeans_best"] for b in baselines)
        if "scvi" in m.index:
            s = m.loc["scvi"]
            row["batch ASW ≥ scVI − 0.02"] = g["asw_batch"] >= s["asw_batch"] - 0.02
            row["kBET ≥ scVI"] = g["kbet_per_label"] >= s["kbet_per_label"]
            row["time ≤ scVI"] = g["train_seconds"] <= s["train_seconds"]
        rows.append(row)
    return pd.DataFrame(rows)


def checks_per_seed(table: pd.DataFrame) -> pd.DataFrame:
    "For each data set and check, in how many seeds the GMVAE passes it against the same seed's baselines (of the seeds with every method of the check)."
    per_seed = [checks(runs.set_index(["dataset", "method"]).drop(columns="seed")).assign(seed=seed)
                for seed, runs in table.groupby("seed")]
    per_seed = [frame for frame in per_seed if not frame.empty]  # a seed without a GMVAE row has no checks
    if not per_seed: return pd.DataFrame()
    passed = pd.concat(per_seed).set_index(["data", "seed"])
    counts = {name: column.dropna().groupby(level=0).agg(lambda v: f"{int(v.astype(bool).sum())} of {len(v)}")
              for name, column in passed.items() if "≥" in name or "≤" in name}
    return pd.DataFrame(counts).rename_axis("data")


def markdown(table: pd.DataFrame, index: bool = True) -> str:
    "`table` as a Markdown table (numbers to 3 decimals), without the optional `tabulate`."
    frame = table.reset_index() if index else table
    if frame.empty: return "(no rows)"
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def parse_setting(item: str) -> tuple[str, object]:
    "NAME and value of a NAME=VALUE setting: VALUE a Python literal (0.002, True, None, \"gmm\") or a plain word (gmm); a ValueError names anything else."
    name, equals, text = item.partition("=")
    if not equals or not name.isidentifier():
        raise ValueError(f"a setting is NAME=VALUE, e.g. lr=0.002 or init_mixture=gmm; got {item!r}")
    try: return name, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.isidentifier(): return name, text
        raise ValueError(f"the value of {name} is neither a Python literal nor a plain word: {text!r}") from None


def parse_n_clusters(items: list[str]) -> dict[str, int]:
    "The GMVAE's K per data set from DATASET=K items (e.g. cite=10); a ValueError names an unknown data set or a K that is not a whole number of at least 1."
    chosen = {}
    for item in items:
        dataset, equals, text = item.partition("=")
        if not equals or dataset not in DATASETS:
            raise ValueError(f"--n-clusters takes DATASET=K with DATASET one of {', '.join(DATASETS)}, e.g. cite=10; got {item!r}")
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"the K of {dataset} must be a whole number of at least 1, got {text!r}")
        chosen[dataset] = int(text)
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SMALL_DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", default="quality.csv", help="CSV of every row (default: %(default)s)")
    parser.add_argument("--fit", nargs="+", default=[], metavar="NAME=VALUE",
                        help="settings passed to the GMVAE's fit, to measure a candidate default (e.g. max_epochs=200 init_mixture=gmm; a plain word that is not a Python literal is a string)")
    parser.add_argument("--model", nargs="+", default=[], metavar="NAME=VALUE",
                        help="architecture arguments passed to GMVAE, to measure a candidate default (e.g. learn_pi=True)")
    parser.add_argument("--n-clusters", nargs="+", default=[], metavar="DATASET=K",
                        help="the GMVAE's K on these data sets instead of their number of labelled groups (e.g. cite=10 multiome=7, "
                             "a sweep's recommended K); the baselines' Leiden at K uses it too")
    parser.add_argument("--per-label", metavar="CSV", default=None,
                        help="also write each cell type's kBET, batch ASW and graph pieces to CSV (multi-batch sets), and print their summary")
    parser.add_argument("--summarise", nargs="+", metavar="CSV", default=None,
                        help="train nothing: print the medians and checks of the rows in these CSVs (earlier runs' --out)")
    args = parser.parse_args()
    if args.summarise:
        return summarise(read_rows(args.summarise))
    fit_settings, model_settings = (dict(parse_setting(item) for item in items) for items in (args.fit, args.model))
    chosen_k = parse_n_clusters(args.n_clusters)
    import torch
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    methods = list(args.methods)
    if "scvi" in methods:
        try: import scvi  # noqa: F401
        except ImportError:
            print('scvi-tools is not installed (pip install -c constraints.txt -e ".[scvi]"): the scVI rows are left out')
            methods.remove("scvi")
    rows, labels = [], []
    for dataset in args.datasets:
        for seed in args.seeds:
            adata = load(dataset, seed)
            n_clusters = chosen_k.get(dataset, adata.obs["cell_type"].nunique())
            for method in methods:
                key, seconds, extra = embed(method, adata, n_clusters, seed, fit_settings, model_settings)
                row = dict(dataset=dataset, method=method, seed=seed, n_clusters=n_clusters, n_cells=adata.n_obs,
                           fit_settings=" ".join(args.fit) if method in ("gmvae", "blog") else "",
                           model_settings=" ".join(args.model) if method in ("gmvae", "blog") else "",
                           train_seconds=seconds, **extra, **score(adata, key, own=method in ("gmvae", "blog")))
                rows.append(row)
                if args.per_label and adata.obs["batch"].nunique() > 1:
                    labels.append(per_label(adata, key).reset_index().assign(dataset=dataset, method=method, seed=seed))
                    pd.concat(labels).to_csv(args.per_label, index=False)
                shown = {k: row.get(k, np.nan) for k in ("ari_own_clusters", "components_used", "ari_leiden_r1",
                                                         "ari_leiden_at_k", "nmi_leiden_best", "ari_kmeans_best", "asw_batch",
                                                         "kbet_per_label", "ilisi", "train_seconds")}
                print(f"{dataset:9s} {method:6s} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()),
                      flush=True)
                pd.DataFrame(rows).to_csv(args.out, index=False)
    summarise(pd.DataFrame(rows))
    if labels:
        print("\nkBET per cell type (medians over seeds):\n")
        print(markdown(per_label_summary(pd.concat(labels))))
    print(f"\nevery row: {args.out}" + (f"; per cell type: {args.per_label}" if labels else ""))


def read_rows(paths: list[str]) -> pd.DataFrame:
    "The rows of earlier runs' CSVs, together; a ValueError names a data set × method × seed given twice, or one measured with two different settings."
    table = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    twice = table[table.duplicated(["dataset", "method", "seed"], keep=False)]
    if len(twice):
        raise ValueError("these runs appear in more than one row of " + ", ".join(paths) + ": "
                         + "; ".join(sorted({f"{d} {m} seed {s}" for d, m, s in twice[["dataset", "method", "seed"]].itertuples(index=False)})))
    settings = table.reindex(columns=["fit_settings", "model_settings", "n_clusters"]).fillna("").astype(str).agg(" | ".join, axis=1)
    mixed = settings.groupby([table["dataset"], table["method"]]).nunique()
    if (mixed > 1).any():
        raise ValueError("rows measured with different --fit/--model settings or K would be summarised together: "
                         + "; ".join(f"{d} {m}" for d, m in mixed[mixed > 1].index))
    return table


def summarise(table: pd.DataFrame):
    "Print the medians over seeds of `table`'s rows, the issue's checks on them, and in how many seeds each check passes."
    medians = table.groupby(["dataset", "method"]).median(numeric_only=True).drop(columns="seed")
    columns = ["ari_own_clusters", "components_used", "ari_leiden_r1", "ari_leiden_at_k", "nmi_leiden_best", "ari_kmeans_best",
               "asw_label", "asw_batch", "kbet_per_label", "ilisi", "test_ari_own_clusters", "train_seconds"]
    print(f"\nMedians over seeds {sorted(table['seed'].unique().tolist())}:\n")
    print(markdown(medians.reindex(columns=columns)))
    print("\nChecks (medians):\n")
    print(markdown(checks(medians), index=False))
    print("\nChecks per seed (seeds where the GMVAE passes against the same seed's baselines):\n")
    print(markdown(checks_per_seed(table)))


if __name__ == "__main__":
    main()
