"""`fit`'s restarts one by one (`n_jobs=1`) against side by side (`n_jobs="auto"`, the default), in the same run.

For every data set and seed, `GMVAE(adata, n_clusters=K, seed=s).fit(n_jobs=…)` is timed both ways, each in a fresh
Python process, so that each pays its own start-up (side by side: the worker processes' too), the two one after the
other, in alternating order from one seed to the next. Printed per fit: the seconds of `fit`, the ratio, the epochs of
the kept run, the processes and each restart's threads, the model's own clusters' ARI against the labels, and the ARI
between the two fits' clusters (1: the same partition; side by side each restart has a share of the threads, so its
sums round otherwise and a seed can end in another optimum). Data sets and K as in `benchmarks/quality.py` (its
`load`: the split, all real data from ../shared/data).

    .venv/bin/python benchmarks/restart_processes.py                                   # the four small sets, seed 0
    .venv/bin/python benchmarks/restart_processes.py --datasets cite --seeds 0 1 2 --n-clusters cite=10
    .venv/bin/python benchmarks/restart_processes.py --datasets bmmc10k                # minutes per fit

Run it alone on the machine: two torch processes slow each other.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import DATASETS, parse_n_clusters  # noqa: E402


def child(name: str, n_clusters: int | None, seed: int, n_jobs: str, threads: int, out: str):
    "In a fresh process: fit the GMVAE on `name` with `n_jobs` and write what the parent prints to `out` (JSON)."
    import numpy as np
    import torch
    from sklearn.metrics import adjusted_rand_score
    from quality import load
    from gmvae_nb.model import GMVAE
    torch.set_num_threads(threads)
    adata = load(name, seed)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    model = GMVAE(adata, n_clusters=n_clusters or len(set(labels)), seed=seed)
    started = time.perf_counter()
    model.fit(progress=False, n_jobs=n_jobs if n_jobs == "auto" else int(n_jobs))
    seconds = time.perf_counter() - started
    clusters = model.predict()
    np.save(Path(out).with_suffix(".npy"), clusters)
    Path(out).write_text(json.dumps(dict(
        seconds=seconds, epochs=len(model.history), n_jobs=model.train_config["n_jobs"],
        restart_threads=model.train_config["restart_threads"], K=model.n_clusters,
        own_ari=adjusted_rand_score(labels, clusters))))


def timed(name: str, n_clusters: int | None, seed: int, n_jobs: str, threads: int, folder: Path) -> dict:
    "One fit in a fresh process: its figures and its clusters."
    import numpy as np
    out = folder / f"{name}_{seed}_{n_jobs}.json"
    done = subprocess.run([sys.executable, __file__, "--child", name, str(n_clusters or 0), str(seed), n_jobs, str(threads),
                           str(out)], capture_output=True, text=True)
    if done.returncode: raise RuntimeError(f"the {n_jobs} fit of {name}, seed {seed}, failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()) | dict(clusters=np.load(out.with_suffix(".npy")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["multiome", "cite", "cellbench", "default"], choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each fit's process (default: %(default)s)")
    parser.add_argument("--n-clusters", nargs="+", default=[], metavar="DATASET=K",
                        help="K on these data sets instead of their number of labelled groups (e.g. cite=10)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n_clusters, seed, n_jobs, threads, out = args.child
        return child(name, int(n_clusters) or None, int(seed), n_jobs, int(threads), out)
    from sklearn.metrics import adjusted_rand_score
    ks = parse_n_clusters(args.n_clusters)
    print("| data | seed | K | one by one s | side by side s | side / one | epochs | processes × threads (one / side) "
          "| own ARI: one / side | ARI between the two |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for run, (name, seed) in enumerate((name, seed) for name in args.datasets for seed in args.seeds):
            ways = ("1", "auto") if run % 2 == 0 else ("auto", "1")
            fits = {way: timed(name, ks.get(name), seed, way, args.threads, Path(folder)) for way in ways}
            one, side = fits["1"], fits["auto"]
            print(f"| {name} | {seed} | {one['K']} | {one['seconds']:.1f} | {side['seconds']:.1f} | "
                  f"{side['seconds'] / one['seconds']:.2f} | {one['epochs']} / {side['epochs']} | "
                  f"{one['n_jobs']} × {one['restart_threads']} / {side['n_jobs']} × {side['restart_threads']} | "
                  f"{one['own_ari']:.3f} / {side['own_ari']:.3f} | {adjusted_rand_score(one['clusters'], side['clusters']):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
