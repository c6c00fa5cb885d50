"""What a training's progress bar writes to a log file: `progress_bar` against tqdm's defaults, in the same run.

A batch job's log (Slurm's `--output`, `nohup`, `2> train.log`) keeps every redraw of a tqdm bar, which redraws up
to ten times a second. `gmvae_nb.files.progress_bar` redraws at most every `LOG_REFRESH_SECONDS` where its stream is
not a terminal. Each mode trains in a subprocess of its own whose stderr is a file, the same model on the same data
from the same seed (`fit(n_init=1)` on the `bmmc` simulation), and the benchmark prints the bytes and the redraws
of each log, per minute of training, and the training's seconds (which the bar should not change):

- package: `fit` as it is;
- tqdm: `fit` with the training's bar made by tqdm with its defaults, as before `progress_bar`.

    .venv/bin/python benchmarks/progress_log.py [--n-cells N] [--n-genes G] [--epochs E] [--threads T]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train(mode: str, n_cells: int, n_genes: int, epochs: int, threads: int) -> dict:
    "Train in this process with the bar of `mode` ('package' or 'tqdm'); the training's seconds."
    import time

    import torch
    from tqdm import tqdm

    import gmvae_nb.train
    from gmvae_nb import GMVAE
    from gmvae_nb.simulate import simulate

    torch.set_num_threads(threads)
    if mode == "tqdm": gmvae_nb.train.progress_bar = tqdm
    adata = simulate("bmmc", n_cells=n_cells, n_genes=n_genes, seed=0, n_jobs=threads)
    model = GMVAE(adata, n_clusters=22, seed=0)
    started = time.perf_counter()
    model.fit(max_epochs=epochs, n_init=1, early_stopping=False)
    return {"seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # a subprocess's own mode
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(train(args.mode, args.n_cells, args.n_genes, args.epochs, args.threads)))
        return
    print(f"{args.n_cells:,} cells × {args.n_genes:,} genes, {args.epochs} epochs, {args.threads} threads")
    print(f"{'bar':>8} {'train s':>8} {'log KB':>8} {'redraws':>8} {'KB/min':>8} {'redraws/min':>12}")
    for mode in ("tqdm", "package"):
        with tempfile.TemporaryDirectory() as folder:
            log = Path(folder) / "stderr.log"
            with open(log, "w") as stderr:
                command = [sys.executable, __file__, "--mode", mode, "--n-cells", str(args.n_cells), "--n-genes",
                           str(args.n_genes), "--epochs", str(args.epochs), "--threads", str(args.threads)]
                done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, check=True,
                                      env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            written = log.read_bytes()  # not read_text, whose universal newlines turn each "\r" into a "\n"
        minutes = figures["seconds"] / 60
        redraws = written.count(b"\r")
        print(f"{mode:>8} {figures['seconds']:8.1f} {len(written) / 1e3:8.1f} {redraws:8d} "
              f"{len(written) / 1e3 / minutes:8.1f} {redraws / minutes:12.1f}")


if __name__ == "__main__":
    main()
