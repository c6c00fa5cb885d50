"""Training throughput of 2 gloo processes (torchrun, DistributedDataParallel) against 1 process on the same CPUs.

At the blog's architecture (K 20, n_x 80, n_w 60, encoder G-300-250, decoder 250-300-G, beta 300, minibatch 128,
M samples), for each gene count G this trains `GMVAE.fit` on a simulated data set of `--cells` cells for
1 + `--epochs` epochs and reports cells/s over the epochs after the first (which pays the allocator's and the
threads' warm-up), in a fresh process per setting:

- 1 process, 1 thread             (the reference: what one core does)
- 1 process, 2 threads            (the reference: what torch's threads make of two cores)
- 2 processes (gloo), 1 thread each

    .venv/bin/python benchmarks/ddp_scaling.py                          # G in {2000, 13431}, M = 10
    .venv/bin/python benchmarks/ddp_scaling.py --genes 2000 --cells 1024 --epochs 1
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 gloo processes, 1 thread each", 2, 1)]


def worker(data: str, threads: int, epochs: int, n_samples: int):
    "Train on `data` (as one of the torchrun processes or alone); rank 0 prints cells/s as a JSON line."
    import anndata as ad
    import torch
    from gmvae_nb.model import GMVAE
    from gmvae_nb.distributed import process_rank
    torch.set_num_threads(threads)
    adata = ad.read_h5ad(data)
    model = GMVAE(adata, seed=0, settings="blog").fit(max_epochs=1 + epochs, n_samples=n_samples, split_key=None, device="cpu",
                                     progress=False)
    if process_rank() == 0:
        seconds = model.history["seconds"].iloc[1:].sum()
        print(json.dumps(dict(cells_per_s=adata.n_obs * epochs / seconds, seconds_per_epoch=seconds / epochs)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(data: Path, processes: int, threads: int, args) -> dict:
    worker_args = [__file__, "--worker", str(data), "--threads", str(threads), "--epochs", str(args.epochs),
                   "--samples", str(args.samples)]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    result = subprocess.run(launcher + worker_args, capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 13431])
    parser.add_argument("--cells", type=int, default=1024, help="cells trained per epoch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs after the first (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=10, help="M (default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker: return worker(args.worker, args.threads, args.epochs, args.samples)

    from gmvae_nb.data import write_h5ad
    from gmvae_nb.simulate import simulate
    print(f"load before: {os.getloadavg()}; {args.cells} cells, minibatch 128, M = {args.samples}, "
          f"{args.epochs} measured epochs")
    print("| G | setting | s/epoch | cells/s | vs 1 process, 1 thread | vs 1 process, 2 threads |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for genes in args.genes:
            data = write_h5ad(simulate("default", n_cells=args.cells, n_genes=genes, seed=0), Path(folder) / f"{genes}.h5ad")
            rates = {}
            for name, processes, threads in SETTINGS:
                result = rates[name] = measure(data, processes, threads, args)
                one, two = (rates.get(SETTINGS[i][0], {}).get("cells_per_s") for i in (0, 1))
                ratio = lambda ref: f"{result['cells_per_s'] / ref:.2f}×" if ref else "–"
                print(f"| {genes:,} | {name} | {result['seconds_per_epoch']:.2f} | {result['cells_per_s']:.0f} | "
                      f"{ratio(one)} | {ratio(two)} |", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
