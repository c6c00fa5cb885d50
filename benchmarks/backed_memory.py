"""Training from a backed h5ad against training in memory: peak RSS and time per epoch on the full-size `bmmc` simulation.

Targets: backed-mode peak RSS at least 2 GiB below in-memory training, at no more than 1.5× its time per epoch
(issue 5); in-memory training within 6 GiB peak RSS (issue 3). The simulation (69,249 cells × 13,431 genes) is written
once to an h5ad file with the counts in `X` only, the layout that keeps them on disk in backed mode (anndata's backed
mode reads the layers into memory). Each mode then runs in a subprocess of its own, so that its peak RSS
(`VmHWM`) is its own, from reading the file to the end of training:

- memory: `load_counts(path, layer=None)`, as users load data, then `GMVAE(adata)` (counts in `layers['counts']`);
- backed: `anndata.read_h5ad(path, backed="r")`, then `GMVAE(adata, layer=None)`.

Both train the blog's architecture (K = 20, M = 10, minibatch 128) from the same seed on the same `--steps`
minibatches of randomly chosen cells, which gives both the same loss (checked); the time per epoch of all cells is
extrapolated from the time per minibatch.

    .venv/bin/python benchmarks/backed_memory.py [--data PATH] [--steps N] [--threads T] [--n-cells N]

`--n-cells` simulates more (or fewer) cells than the preset's 69,249, to see how the saving grows with the data.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import h5py

from gmvae_nb.simulate import PRESETS

BATCH_SIZE = 128


def peak_rss_gib() -> float:
    "Peak resident memory of this process so far, in GiB: VmHWM, not ru_maxrss, which Linux carries over from the parent."
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 2**20  # in KiB


def write_data(path: Path, n_cells: int, n_jobs: int):
    "Simulate `n_cells` cells of the `bmmc` preset and write them to `path` with the counts in X only."
    import anndata as ad

    from gmvae_nb.data import write_h5ad
    from gmvae_nb.simulate import simulate

    adata = simulate("bmmc", n_cells=n_cells, n_jobs=n_jobs)
    write_h5ad(ad.AnnData(X=adata.layers["counts"], obs=adata.obs, var=adata.var), path)


def train(mode: str, path: Path, steps: int, threads: int) -> dict:
    "Load `path` in `mode` ('memory' or 'backed') and train for `steps` minibatches; the figures of the run."
    import anndata as ad
    import numpy as np
    import torch

    from gmvae_nb import GMVAE
    from gmvae_nb.data import load_counts

    torch.set_num_threads(threads)
    started = time.perf_counter()
    if mode == "memory":
        adata, layer = load_counts(path, layer=None), "counts"
    else:
        adata, layer = ad.read_h5ad(path, backed="r"), None
    loaded = time.perf_counter()
    chosen = np.random.default_rng(0).choice(adata.n_obs, steps * BATCH_SIZE, replace=False)
    adata.obs["benchmark"] = np.where(np.isin(np.arange(adata.n_obs), chosen), "train", "test")
    model = GMVAE(adata, n_clusters=20, layer=layer, seed=0, settings="blog")  # the blog's architecture
    built = time.perf_counter()
    model.fit(split_key="benchmark", max_epochs=1, batch_size=BATCH_SIZE, n_samples=10, device="cpu", progress=False)
    step_s = model.history["seconds"].iloc[0] / steps
    return dict(mode=mode, n_obs=adata.n_obs, load_s=loaded - started, build_s=built - loaded, step_s=step_s,
                epoch_s=step_s * math.ceil(adata.n_obs / BATCH_SIZE), neg_elbo=float(model.history["train_neg_elbo"].iloc[0]),
                peak_rss_gib=peak_rss_gib())


def in_fresh_process(script: str, arguments: list[str], threads: int) -> dict:
    "The JSON object that `script arguments --threads threads` prints last, run in a fresh Python process with `threads` threads."
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, script, *arguments, "--threads", str(threads)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_mode(mode: str, path: Path, steps: int, threads: int) -> dict:
    "`train` in a fresh Python process with `threads` threads."
    return in_fresh_process(__file__, ["--mode", mode, "--data", str(path), "--steps", str(steps)], threads)


@contextmanager
def simulated_file(path: Path | None, n_cells: int | None, n_jobs: int):
    "`path`, or a temporary file while the block runs, holding `n_cells` cells of the `bmmc` preset (None: the preset's) as `write_data` writes them; simulated unless the file is there."
    with tempfile.TemporaryDirectory() as tmp:
        path = path or Path(tmp) / "bmmc_counts_in_X.h5ad"
        if not path.exists():
            started = time.perf_counter()
            write_data(path, n_cells or PRESETS["bmmc"]["n_cells"], n_jobs=n_jobs)
            print(f"simulated and wrote {path} in {time.perf_counter() - started:.0f} s")
        yield path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="h5ad of the simulation, counts in X; written if absent (default: a temporary file)")
    parser.add_argument("--steps", type=int, default=150, help="minibatches of 128 cells to train on in each mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    parser.add_argument("--n-cells", type=int, default=None, help="cells to simulate (default: the preset's 69,249)")
    parser.add_argument("--mode", choices=("memory", "backed"), help=argparse.SUPPRESS)  # the subprocess of one mode
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(train(args.mode, args.data, args.steps, args.threads)))
        return

    print(f"{len(os.sched_getaffinity(0))} CPUs available, load average {os.getloadavg()[0]:.1f}; "
          f"{args.steps} minibatches of {BATCH_SIZE} cells per mode, M = 10, K = 20, {args.threads} torch thread(s)")
    with simulated_file(args.data, args.n_cells, n_jobs=args.threads) as path:
        with h5py.File(path, "r") as file:
            shape, nnz = file["X"].attrs["shape"], file["X/data"].shape[0]
        csr_gib = nnz * (4 + 4) / 2**30  # float32 values and int32 column indices
        print(f"data: {shape[0]:,} cells × {shape[1]:,} genes, {nnz:,} nonzeros: {csr_gib:.2f} GiB as CSR float32 in memory")
        runs = {mode: run_mode(mode, path, args.steps, args.threads) for mode in ("memory", "backed")}

    print(f"{'mode':8} {'load s':>7} {'build s':>8} {'s/minibatch':>12} {'s/epoch':>8} {'peak RSS GiB':>13}")
    for mode, run in runs.items():
        print(f"{mode:8} {run['load_s']:7.1f} {run['build_s']:8.1f} {run['step_s']:12.3f} {run['epoch_s']:8.0f} {run['peak_rss_gib']:13.2f}")
    memory, backed = runs["memory"], runs["backed"]
    assert memory["n_obs"] == backed["n_obs"], "the two modes read different cells"
    same = memory["neg_elbo"] == backed["neg_elbo"]
    saved, ratio = memory["peak_rss_gib"] - backed["peak_rss_gib"], backed["epoch_s"] / memory["epoch_s"]
    verdict = lambda ok: "PASS" if ok else "FAIL"
    print(f"same training loss in both modes: {same} ({memory['neg_elbo']:.6f} vs {backed['neg_elbo']:.6f})")
    print(f"backed saves {saved:.2f} GiB of peak RSS (target ≥ 2 GiB): {verdict(saved >= 2)}")
    print(f"backed time per epoch / in-memory: {ratio:.2f} (target ≤ 1.5): {verdict(ratio <= 1.5)}")
    print(f"in-memory training peak RSS {memory['peak_rss_gib']:.2f} GiB (target ≤ 6 GiB): {verdict(memory['peak_rss_gib'] <= 6)}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
