"""How long `gmvae_nb.metrics.evaluate` takes on 10,000 cells, step by step, against the plain scib-metrics route.

    .venv/bin/python benchmarks/evaluate_speed.py            # 10,000 cells × 80 dims, 22 cell types, 13 batches
    .venv/bin/python benchmarks/evaluate_speed.py --cells 2000 --skip-reference

The embedding is `toy_embedding`: 22 cell types of unequal sizes at random centres (spread 0.5 noise sd per dim, so
neighbouring types overlap a little), 13 batches each shifted by its own offset (0.2 sd per dim), unit noise. Each
route runs in a fresh Python process, so that its imports and its numba and JAX compilations are counted, as they are
in a sweep, where every run is a new notebook kernel:

* ours: `evaluate` cold (first call), then warm (second call in the same process), then warm with the libraries'
  default thread pools (`n_threads=None`) instead of one thread;
* reference: the scib-metrics functions one by one (`silhouette_label`, `isolated_labels`,
  `nmi_ari_cluster_labels_leiden` (10 resolutions), `nmi_ari_cluster_labels_kmeans` (k = number of labels),
  `graph_connectivity`, `silhouette_batch`, `kbet_per_label`, `ilisi_knn`) on the same exact neighbours.

It prints seconds per step, the total, peak RSS, and the two routes' values side by side.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

STEPS = {  # step: what it computes
    "neighbors": "exact 90-NN search",
    "silhouettes": "cell-type ASW + isolated-label ASW",
    "leiden": "NMI: Leiden clusterings (+ 15-NN UMAP connectivities)",
    "kmeans": "ARI: k-means clusterings",
    "graph_connectivity": "graph connectivity",
    "asw_batch": "batch ASW",
    "kbet_per_label": "kBET per cell type (+ 50-NN UMAP connectivities)",
    "ilisi": "iLISI",
}
COMPARED = {  # our key: (reference key, how the two are related)
    "asw_label": ("asw_label", "same definition (sklearn vs JAX silhouettes)"),
    "asw_isolated_label": ("asw_isolated_label", "same definition (sklearn vs JAX silhouettes)"),
    "nmi_leiden_best": ("nmi_leiden", "ours: best of 20 resolutions 0.1..2.0; scib: best of 10, 0.2..2.0"),
    "ari_kmeans_best": ("ari_kmeans", "ours: best over k = 1..22; scib: k = 22 only"),
    "asw_batch": ("asw_batch", "same definition (sklearn vs JAX silhouettes)"),
    "kbet_per_label": ("kbet_per_label", "same procedure; exact vs approximate (pynndescent) diffusion neighbours"),
    "ilisi": ("ilisi", "same definition (NumPy vs JAX)"),
    "graph_connectivity": ("graph_connectivity", "same function"),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def toy(args):
    from gmvae_nb.metrics import toy_embedding
    return toy_embedding(n_cells=args.cells, n_labels=args.labels, n_batches=args.batches, n_dims=args.dims,
                         label_scale=0.5, batch_scale=0.2, seed=0)


def route_ours(args) -> dict:
    start = time.perf_counter()
    from gmvae_nb.metrics import evaluate
    imports = time.perf_counter() - start
    adata = toy(args)
    runs = {}
    for run, n_threads in (("cold", 1), ("warm", 1), ("warm, default threads", None)):
        timings, start = {}, time.perf_counter()
        scores = evaluate(adata, embedding="X_toy", timings=timings, n_threads=n_threads)
        runs[run] = {"total": time.perf_counter() - start, "steps": timings}
    return {"imports": imports, "runs": runs, "scores": scores, "peak_rss_mb": peak_rss_mb()}


def route_scib(args) -> dict:
    start = time.perf_counter()
    import scib_metrics
    from gmvae_nb.metrics import exact_neighbors
    imports = time.perf_counter() - start
    adata = toy(args)
    coordinates = adata.obsm["X_toy"]
    labels, batches = adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["batch"].astype(str).to_numpy()
    steps, scores, begin = {}, {}, time.perf_counter()

    def timed(step, function, *arguments, **keywords):
        start = time.perf_counter()
        result = function(*arguments, **keywords)
        steps[step] = steps.get(step, 0.0) + time.perf_counter() - start
        return result

    neighbors = timed("neighbors", exact_neighbors, coordinates, 90)
    graph, kbet_graph = neighbors.subset_neighbors(15), neighbors.subset_neighbors(50)
    scores["asw_label"] = timed("silhouettes", scib_metrics.silhouette_label, coordinates, labels)
    scores["asw_isolated_label"] = timed("silhouettes", scib_metrics.isolated_labels, coordinates, labels, batches)
    leiden = timed("leiden", scib_metrics.nmi_ari_cluster_labels_leiden, graph, labels, optimize_resolution=True, seed=0)
    kmeans = timed("kmeans", scib_metrics.nmi_ari_cluster_labels_kmeans, coordinates, labels)
    scores |= {"nmi_leiden": leiden["nmi"], "ari_kmeans": kmeans["ari"]}
    scores["graph_connectivity"] = timed("graph_connectivity", scib_metrics.graph_connectivity, graph, labels)
    scores["asw_batch"] = timed("asw_batch", scib_metrics.silhouette_batch, coordinates, labels, batches)
    scores["kbet_per_label"] = timed("kbet_per_label", scib_metrics.kbet_per_label, kbet_graph, batches, labels)
    scores["ilisi"] = timed("ilisi", scib_metrics.ilisi_knn, neighbors, batches)
    total = time.perf_counter() - begin
    return {"imports": imports, "runs": {"cold": {"total": total, "steps": steps}},
            "scores": {key: float(value) for key, value in scores.items()}, "peak_rss_mb": peak_rss_mb()}


def run_route(route: str, args) -> dict:
    "Run one route in a fresh interpreter and read back its JSON (the last line it prints)."
    command = [sys.executable, __file__, "--route", route, "--cells", str(args.cells), "--labels", str(args.labels),
               "--batches", str(args.batches), "--dims", str(args.dims)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=22)
    parser.add_argument("--batches", type=int, default=13)
    parser.add_argument("--dims", type=int, default=80)
    parser.add_argument("--skip-reference", action="store_true", help="time only ours")
    parser.add_argument("--route", choices=["ours", "scib"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.route:
        print(json.dumps((route_ours if args.route == "ours" else route_scib)(args)))
        return

    print(f"{args.cells:,} cells × {args.dims} dims, {args.labels} cell types, {args.batches} batches; "
          f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}")
    ours = run_route("ours", args)
    reference = None if args.skip_reference else run_route("scib", args)
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")

    columns = {f"ours, {run}": timing for run, timing in ours["runs"].items()}
    if reference:
        columns["scib-metrics, cold"] = reference["runs"]["cold"]
    print(f"{'seconds':<52}" + "".join(f"{name:>29}" for name in columns))
    for step, what in STEPS.items():
        print(f"{what:<52}" + "".join(f"{timing['steps'].get(step, float('nan')):>29.2f}" for timing in columns.values()))
    print(f"{'total (evaluate / the reference calls)':<52}" + "".join(f"{t['total']:>29.2f}" for t in columns.values()))
    print(f"\nimports: ours {ours['imports']:.1f} s" + (f", reference {reference['imports']:.1f} s" if reference else ""))
    print(f"peak RSS: ours {ours['peak_rss_mb']:.0f} MB" + (f", reference {reference['peak_rss_mb']:.0f} MB" if reference else ""))
    if reference:
        print(f"\ncold evaluate: {ours['runs']['cold']['total']:.1f} s vs the reference {reference['runs']['cold']['total']:.1f} s "
              f"({reference['runs']['cold']['total'] / ours['runs']['cold']['total']:.1f}× faster)\n")
        print(f"{'metric':<22}{'ours':>8}{'scib':>8}   relation")
        for key, (reference_key, relation) in COMPARED.items():
            print(f"{key:<22}{ours['scores'][key]:>8.4f}{reference['scores'][reference_key]:>8.4f}   {relation}")


if __name__ == "__main__":
    main()
