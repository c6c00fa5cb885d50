"""`fit`'s restarts one by one (`n_jobs=1`) against side by side (`n_jobs="auto"`, the default), in the same run.

For every data set and seed, `GMVAE(adata, n_clusters=K, seed=s).fit(n_jobs=…)` is timed both ways, each in a fresh
Python process, so that each pays its own start-up (side by side: the worker processes' too), the two one after the
other, in alternating order from one seed to the next. Printed per fit: the seconds of `fit`, the ratio, the epochs of
the kept run, the processes and each restart's threads, the machine's memory taken by the fit (the peak, while it
runs, of the memory in use, MemTotal − MemAvailable, less that before it: the calling process, the worker processes,
and the counts that joblib shares with them through a memory-mapped file) and what of it is still held a second
after `fit` returned (side by side: the idle workers, which joblib keeps for the next fit), the model's own clusters' ARI against the
labels, and the ARI between the two fits' clusters (1: the same partition; side by side each restart has a share of
the threads, so its sums round otherwise and a seed can end in another optimum). Data sets and K as in
`benchmarks/quality.py` (its `load`: the split, all real data from ../shared/data).

    .venv/bin/python benchmarks/restart_processes.py                                   # the four small sets, seed 0
    .venv/bin/python benchmarks/restart_processes.py --datasets cite --seeds 0 1 2 --n-clusters cite=10
    .venv/bin/python benchmarks/restart_processes.py --datasets bmmc10k                # minutes per fit
    .venv/bin/python benchmarks/restart_processes.py --datasets bmmc bmmc_hvg --fit max_epochs=2 init_epochs=1   # memory at the target's size
    .venv/bin/python benchmarks/restart_processes.py --datasets bmmc_hvg --fit max_epochs=2 init_epochs=1 --user-object

Run it alone on the machine: two torch processes slow each other.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import DATASETS, SMALL_DATASETS, parse_n_clusters, parse_setting  # noqa: E402


def memory_in_use() -> int:
    "Bytes of the machine's memory in use: psutil's total less available (Linux's MemTotal − MemAvailable: processes, shared memory, files held in memory)."
    import psutil
    memory = psutil.virtual_memory()
    return memory.total - memory.available


@contextmanager
def memory_taken(every: float = 0.05):
    "Yields a dict: 'before', `memory_in_use` as the block starts, once this process's garbage is freed and its heap trimmed; 'bytes', once it ends, the peak while it ran (sampled every `every` s) less that before."
    import gc
    from gmvae_nb.train import _glibc
    gc.collect()
    libc = _glibc()
    if libc is not None: libc.malloc_trim(0)  # what loading left for the allocator to reuse, given back
    before = memory_in_use()
    taken, done = dict(before=before, bytes=0), threading.Event()
    def sample():
        while not done.wait(every): taken["bytes"] = max(taken["bytes"], memory_in_use() - before)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try: yield taken
    finally:
        done.set()
        sampler.join()
        taken["bytes"] = max(taken["bytes"], memory_in_use() - before)


def as_users_object(adata):
    "`adata` as a scanpy user's object holds it: X log-normalised (10⁴ counts a cell, log1p) beside the counts in layers['counts'], and a 50-component embedding in obsm."
    import numpy as np
    import scipy.sparse as sp
    counts = adata.layers["counts"]
    library = np.asarray(counts.sum(1)).ravel()
    adata.X = sp.csr_matrix(sp.diags((1e4 / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)
    np.log1p(adata.X.data, out=adata.X.data)
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 50)).astype(np.float32)
    return adata


def child(name: str, n_clusters: int | None, seed: int, n_jobs: str, threads: int, users_object: bool, fit_settings: dict,
          out: str):
    "In a fresh process: fit the GMVAE on `name` (as `as_users_object` makes it if `users_object`) with `n_jobs` (and `fit_settings`) and write what the parent prints to `out` (JSON)."
    import numpy as np
    import torch
    from sklearn.metrics import adjusted_rand_score
    from quality import load
    from gmvae_nb.model import GMVAE
    torch.set_num_threads(threads)
    adata = as_users_object(load(name, seed)) if users_object else load(name, seed)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    model = GMVAE(adata, n_clusters=n_clusters or len(set(labels)), seed=seed)
    with memory_taken() as taken:
        started = time.perf_counter()
        model.fit(progress=False, n_jobs=n_jobs if n_jobs == "auto" else int(n_jobs), **fit_settings)
        seconds = time.perf_counter() - started
    time.sleep(1)  # the memory still held a second after fit returned (side by side: the idle workers, kept for the next fit)
    held = memory_in_use() - taken["before"]
    clusters = model.predict()
    np.save(Path(out).with_suffix(".npy"), clusters)
    Path(out).write_text(json.dumps(dict(
        seconds=seconds, epochs=len(model.history), n_jobs=model.train_config["n_jobs"],
        restart_threads=model.train_config["restart_threads"], K=model.n_clusters, memory_gib=taken["bytes"] / 2**30,
        held_gib=held / 2**30,
        own_ari=adjusted_rand_score(labels, clusters))))


def timed(name: str, n_clusters: int | None, seed: int, n_jobs: str, threads: int, users_object: bool, fit_settings: list[str],
          folder: Path) -> dict:
    "One fit in a fresh process: its figures and its clusters."
    import numpy as np
    out = folder / f"{name}_{seed}_{n_jobs}.json"
    done = subprocess.run([sys.executable, __file__, "--child", name, str(n_clusters or 0), str(seed), n_jobs, str(threads),
                           str(int(users_object)), str(out), *fit_settings], capture_output=True, text=True)
    if done.returncode: raise RuntimeError(f"the {n_jobs} fit of {name}, seed {seed}, failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()) | dict(clusters=np.load(out.with_suffix(".npy")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=[d for d in SMALL_DATASETS if d != "recovery"], choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each fit's process (default: %(default)s)")
    parser.add_argument("--n-clusters", nargs="+", default=[], metavar="DATASET=K",
                        help="K on these data sets instead of their number of labelled groups (e.g. cite=10)")
    parser.add_argument("--fit", nargs="+", default=[], metavar="NAME=VALUE",
                        help="settings passed to both fits (e.g. max_epochs=2 init_epochs=1: the memory of a large data set in minutes)")
    parser.add_argument("--user-object", action="store_true",
                        help="X log-normalised beside layers['counts'] and an embedding in obsm, as a scanpy user's object holds them")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fit_settings = dict(parse_setting(item) for item in args.fit)  # a malformed one named before anything trains
    if args.child:
        name, n_clusters, seed, n_jobs, threads, users_object, out, *settings = args.child
        return child(name, int(n_clusters) or None, int(seed), n_jobs, int(threads), users_object == "1",
                     dict(map(parse_setting, settings)), out)
    from sklearn.metrics import adjusted_rand_score
    ks = parse_n_clusters(args.n_clusters)
    if fit_settings: print("fit settings of both ways: " + " ".join(args.fit))
    if args.user_object: print("each data set as a user's object: X log-normalised beside layers['counts'], an embedding in obsm")
    print("| data | seed | K | one by one s | side by side s | side / one | epochs | processes × threads (one / side) "
          "| memory taken GiB (one / side) | held after GiB (one / side) | own ARI: one / side | ARI between the two |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for run, (name, seed) in enumerate((name, seed) for name in args.datasets for seed in args.seeds):
            ways = ("1", "auto") if run % 2 == 0 else ("auto", "1")
            fits = {way: timed(name, ks.get(name), seed, way, args.threads, args.user_object, args.fit, Path(folder)) for way in ways}
            one, side = fits["1"], fits["auto"]
            print(f"| {name} | {seed} | {one['K']} | {one['seconds']:.1f} | {side['seconds']:.1f} | "
                  f"{side['seconds'] / one['seconds']:.2f} | {one['epochs']} / {side['epochs']} | "
                  f"{one['n_jobs']} × {one['restart_threads']} / {side['n_jobs']} × {side['restart_threads']} | "
                  f"{one['memory_gib']:.2f} / {side['memory_gib']:.2f} | {one['held_gib']:.2f} / {side['held_gib']:.2f} | "
                  f"{one['own_ari']:.3f} / {side['own_ari']:.3f} | {adjusted_rand_score(one['clusters'], side['clusters']):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
