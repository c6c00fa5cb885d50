"""Simulate the full `bmmc` preset (69,249 cells × 13,431 genes) and write it to h5ad; read it back.

Target (issue 2): simulate + write in ≤ 60 s with ≤ 4 GiB peak RSS on the 2-core machine, and the file loads back
sparse. Reference, in the same run: numpy's plain gamma–Poisson draws of the same NB means (rebuilt from the truth
in `uns['simulation']`) for a slice of cells, timed and extrapolated to the full matrix.

    .venv/bin/python benchmarks/simulate_bmmc.py [--n-cells N] [--n-jobs J] [--out PATH]
"""
import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from gmvae_nb.simulate import PRESETS, simulate, zero_fraction


def peak_rss_gib() -> float:
    "Peak resident memory of this process so far, in GiB (ru_maxrss is in KiB on Linux)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def true_means(adata: ad.AnnData, cells: slice) -> tuple[np.ndarray, np.ndarray]:
    "The NB means of `cells` and every gene's inverse dispersion, rebuilt from `uns['simulation']` alone."
    truth, obs = adata.uns["simulation"], adata.obs.iloc[cells]
    lineage = np.array([list(truth["lineages"]).index(x) for x in obs["lineage"].astype(str)])
    site = np.array([list(truth["sites"]).index(x) for x in obs["site"].astype(str)])
    donor = np.array([list(truth["donors"]).index(x) for x in obs["donor"].astype(str)])
    profile = (truth["base_mean"].astype(np.float64) * truth["lineage_de"][lineage]
               * truth["type_de"][obs["cell_type"].cat.codes] * truth["site_factor"][site] * truth["donor_factor"][donor])
    profile /= profile.sum(1, keepdims=True)
    return obs["library_size"].to_numpy(np.float64)[:, None] * profile, 1 / truth["dispersion"].astype(np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=PRESETS["bmmc"]["n_cells"])
    parser.add_argument("--n-jobs", type=int, default=None, help="threads (default: all CPUs available)")
    parser.add_argument("--out", type=Path, default=None, help="h5ad path (default: a temporary file, removed)")
    parser.add_argument("--reference-cells", type=int, default=1000)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"bmmc preset: {args.n_cells:,} cells × {PRESETS['bmmc']['n_genes']:,} genes; {cpus} CPUs available, "
          f"load average {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    adata = simulate("bmmc", n_cells=args.n_cells, n_jobs=args.n_jobs)
    simulate_s = time.perf_counter() - t0
    counts = adata.layers["counts"]
    n_cells, n_genes = counts.shape
    entries = n_cells * n_genes
    print(f"simulate: {simulate_s:.1f} s ({simulate_s / entries * 1e9:.1f} ns/entry), {counts.nnz:,} nonzeros, "
          f"{zero_fraction(counts):.2%} zeros, median library {np.median(adata.obs['n_counts']):,.0f}, "
          f"peak RSS {peak_rss_gib():.2f} GiB")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or Path(tmp) / "bmmc.h5ad"
        t0 = time.perf_counter()
        adata.write_h5ad(path)
        write_s = time.perf_counter() - t0
        print(f"write:    {write_s:.1f} s, {path.stat().st_size / 2**30:.2f} GiB on disk, peak RSS {peak_rss_gib():.2f} GiB")
        total_s, total_rss = simulate_s + write_s, peak_rss_gib()

        cells = slice(0, args.reference_cells)
        mean, theta = true_means(adata, cells)
        simulated_zeros = zero_fraction(counts[cells])
        del adata, counts
        gc.collect()
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        reference = rng.poisson(rng.gamma(theta, mean / theta))
        reference_s = time.perf_counter() - t0
        del mean
        print(f"reference: numpy gamma–Poisson on the first {args.reference_cells:,} cells' true means: "
              f"{reference_s / reference.size * 1e9:.1f} ns/entry, {zero_fraction(reference):.2%} zeros "
              f"(simulated: {simulated_zeros:.2%}); extrapolated to all {n_cells:,} cells: "
              f"{reference_s / reference.size * entries:.0f} s")
        del reference

        t0 = time.perf_counter()
        back = ad.read_h5ad(path)
        read_s = time.perf_counter() - t0
        sparse = all(sp.issparse(m) and m.format == "csr" for m in (back.X, back.layers["counts"]))
        print(f"read back: {read_s:.1f} s, X and layers['counts'] CSR sparse: {sparse}, shape {back.shape}, "
              f"peak RSS now {peak_rss_gib():.2f} GiB")
        assert sparse, "the written file did not load back sparse"

    verdict = "PASS" if total_s <= 60 and total_rss <= 4 else "FAIL"
    print(f"simulate + write: {total_s:.1f} s (target ≤ 60 s), peak RSS {total_rss:.2f} GiB (target ≤ 4 GiB): {verdict}")


if __name__ == "__main__":
    main()
