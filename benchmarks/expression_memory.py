"""`get_normalized_expression` and `differential_expression` at the target data's size: peak memory and time.

The full-size `bmmc` simulation (69,249 cells × 13,431 genes) is written once to an h5ad file with the counts in `X`
(as `backed_memory.py` writes it). Each call is measured in a fresh process, which loads the file
(`load_counts(path, layer=None)`), builds a GMVAE with the default architecture and K = 20 (untrained: what a call
costs does not depend on the weights), resets its peak-RSS mark (`/proc/self/clear_refs`) and makes the one call:

- `genes`: `get_normalized_expression(gene_list=<20 genes>)`, the result cells × 20;
- `all`: `get_normalized_expression()`, the dense cells × genes result;
- `de`: `differential_expression(groupby="cell_type", group1=<the largest type>)`, one comparison against the rest
  with the default 5,000 pairs.

Its figures are the peak RSS during the call above the RSS before it, and the call's wall time.

    .venv/bin/python benchmarks/expression_memory.py [--data PATH] [--n-cells N] [--threads T] [--calls genes all de]
"""
import argparse
import json
import os
import time
from pathlib import Path

from backed_memory import in_fresh_process, peak_rss_gib, simulated_file

CALLS = ("genes", "all", "de")


def rss_gib() -> float:
    "Resident memory of this process now, in GiB (VmRSS)."
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 2**20  # in KiB


def measure(call: str, path: Path, threads: int) -> dict:
    "Load `path`, build the model and make `call`; the call's extra peak RSS and its time."
    import torch

    from gmvae_nb import GMVAE
    from gmvae_nb.data import load_counts

    torch.set_num_threads(threads)
    adata = load_counts(path, layer=None)
    model = GMVAE(adata, n_clusters=20, seed=0)
    largest_type = adata.obs["cell_type"].value_counts().index[0]
    run = {"genes": lambda: model.get_normalized_expression(gene_list=list(adata.var_names[::672])),
           "all": lambda: model.get_normalized_expression(),
           "de": lambda: model.differential_expression(groupby="cell_type", group1=largest_type)}[call]
    before = rss_gib()
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark restarts from the RSS now
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    return dict(call=call, n_obs=adata.n_obs, n_vars=adata.n_vars, shape=list(result.shape), seconds=seconds,
                call_peak_gib=peak_rss_gib() - before, result_gib=result.memory_usage(index=False).sum() / 2**30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="h5ad of the simulation, counts in X; written if absent (default: a temporary file)")
    parser.add_argument("--n-cells", type=int, default=None, help="cells to simulate (default: the preset's 69,249)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each measuring process")
    parser.add_argument("--calls", nargs="+", choices=CALLS, default=list(CALLS), help="the calls to measure")
    parser.add_argument("--call", choices=CALLS, help=argparse.SUPPRESS)  # the subprocess of one call
    args = parser.parse_args()
    if args.call:
        print(json.dumps(measure(args.call, args.data, args.threads)))
        return

    print(f"{len(os.sched_getaffinity(0))} CPUs available, load average {os.getloadavg()[0]:.1f}; "
          f"{args.threads} torch thread(s), default architecture, K = 20, batch_size 1024")
    with simulated_file(args.data, args.n_cells, n_jobs=args.threads) as path:
        runs = [in_fresh_process(__file__, ["--call", call, "--data", str(path)], args.threads) for call in args.calls]
    print(f"{'call':6} {'result':>18} {'result GiB':>11} {'call peak GiB':>14} {'s':>7}")
    for run in runs:
        shape = " × ".join(f"{n:,}" for n in run["shape"])
        print(f"{run['call']:6} {shape:>18} {run['result_gib']:11.3f} {run['call_peak_gib']:14.2f} {run['seconds']:7.1f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
