"""Annotating a file of the NeurIPS 2021 layout: the counts of the model's genes against the whole file in memory.

`gmvae-nb fit` and `gmvae-nb predict` write the user's file back with the model's annotations added. The GEO files of
the target data hold, besides the 13,431 genes, the ATAC peaks (or antibody tags), twice: raw in `layers['counts']`,
log-normalised in `X`. This benchmark writes such a file — `--n-cells` cells × `--genes` GEX genes + `--peaks` ATAC
peaks, `--gene-entries` and `--peak-entries` stored counts per cell, counts and log-normalised values of every
feature, a 50-dimensional `X_pca` — and a model of its first `--model-genes` genes (trained `--epochs` epochs on 2,000
of its cells), then annotates the file with the model as each way does, each in a subprocess of its own so that its
peak RSS (`VmHWM`) is its own:

- whole (the reference: the commands until 2026-12-07): `read_h5ad(path)`, `GMVAE.load(model, adata)`, the
  annotations, `write_h5ad`;
- genes (the commands since): `read_gene_counts(path, model.genes)`, `GMVAE.load`, the annotations,
  `write_annotated`, which copies the file and rewrites its obs, var, obsm and uns.

The two written files must hold the same clusters, responsibilities, obs and var (checked) and the same matrices
(checked on `X`'s and the counts' stored values, read back in blocks); the aligned embeddings, a float32 sum whose
last bits can differ from one process to the next, are compared by their largest difference.

    .venv/bin/python benchmarks/annotate_memory.py [--n-cells N] [--threads T] [--keep DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gib() -> float:
    "Peak resident memory of this process so far, in GiB: VmHWM, not ru_maxrss, which Linux carries over from the parent."
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 2**20  # in KiB


def write_data(path: Path, args):
    "Write the NeurIPS-layout file: counts of genes and peaks in layers['counts'], log-normalised in X, an X_pca."
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from gmvae_nb.data import write_h5ad
    rng = np.random.default_rng(0)
    n, blocks = args.n_cells, []
    for n_features, entries in ((args.genes, args.gene_entries), (args.peaks, args.peak_entries)):
        columns = np.sort(rng.integers(0, n_features, size=(n, entries)), axis=1)  # repeats summed below
        values = rng.geometric(0.5, size=(n, entries)).astype(np.float32)
        block = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(0, n * entries + 1, entries)), shape=(n, n_features))
        block.sum_duplicates()
        blocks.append(block)
    counts = sp.hstack(blocks, format="csr")
    normalised = counts.copy()
    library = np.asarray(counts.sum(1)).ravel()
    normalised.data = np.log1p(normalised.data / np.repeat(library, np.diff(counts.indptr)) * 1e4).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(rng.choice([f"s{i}d1" for i in range(1, 5)], n)),
                        "cell_type": pd.Categorical(rng.choice([f"type{i}" for i in range(22)], n))},
                       index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame({"feature_types": ["GEX"] * args.genes + ["ATAC"] * args.peaks},
                       index=[f"gene{i}" for i in range(args.genes)] + [f"chr1-{i}" for i in range(args.peaks)])
    write_h5ad(ad.AnnData(X=normalised, obs=obs, var=var, layers={"counts": counts},
                          obsm={"X_pca": rng.normal(size=(n, 50)).astype(np.float32)}), path)
    return counts.nnz


def train_model(path: Path, folder: Path, args):
    "A model of the file's first `--model-genes` genes, trained `--epochs` epochs on 2,000 of its cells."
    import anndata as ad
    import h5py

    from gmvae_nb.data import read_gene_counts
    from gmvae_nb.model import GMVAE
    with h5py.File(path) as file:
        genes = [name.decode() for name in file["var/_index"][:args.model_genes]]
    cells = read_gene_counts(path, genes)[:2000]
    cells = ad.AnnData(obs=cells.obs, var=cells.var.loc[genes], layers={"counts": cells.layers["counts"][:, :args.model_genes]})
    GMVAE(cells, n_clusters=10, seed=0).fit(max_epochs=args.epochs, n_init=1, progress=False).save(folder)


def annotate_file(way: str, path: Path, model_folder: Path, out: Path, threads: int) -> dict:
    "Annotate `path` with the model in `model_folder` the way `way` does; write it to `out`; the figures of the run."
    import torch
    torch.set_num_threads(threads)
    from gmvae_nb.cli import annotate
    from gmvae_nb.data import read_gene_counts, read_h5ad, write_annotated, write_h5ad
    from gmvae_nb.model import GMVAE, saved_config
    start = time.perf_counter()
    if way == "whole":
        adata = read_h5ad(path)
    else:
        adata = read_gene_counts(path, saved_config(model_folder)["genes"])
    read = time.perf_counter() - start
    model = GMVAE.load(model_folder, adata, device="cpu")
    annotate(model)
    annotated = time.perf_counter() - start - read
    if way == "whole": write_h5ad(model.adata, out)
    else: write_annotated(model.adata, path, out)
    return dict(way=way, peak_rss_gib=peak_rss_gib(), read_s=read, annotate_s=annotated,
                write_s=time.perf_counter() - start - read - annotated, total_s=time.perf_counter() - start)


def compare_files(first: Path, second: Path) -> tuple[bool, float]:
    "Whether the two annotated files hold the same clusters, responsibilities, obs, var, X_pca, X and counts (the matrices read back in blocks of cells), and the largest difference between their embeddings."
    import h5py
    import numpy as np
    from anndata.io import read_elem, sparse_dataset
    with h5py.File(first) as a, h5py.File(second) as b:
        # the aligned embedding is a float32 sum whose last bits can differ between processes (the buffers' alignment)
        embedding_difference = float(np.abs(read_elem(a["obsm/X_gmvae"]) - read_elem(b["obsm/X_gmvae"])).max())
        same = all(np.array_equal(read_elem(a[key]), read_elem(b[key])) for key in ("obsm/X_gmvae_w", "obsm/gmvae_proba", "obsm/X_pca"))
        same &= read_elem(a["obs"]).equals(read_elem(b["obs"])) and read_elem(a["var"]).equals(read_elem(b["var"]))
        for key in ("X", "layers/counts"):
            x, y = sparse_dataset(a[key]), sparse_dataset(b[key])
            same &= all((x[start:start + 5000] != y[start:start + 5000]).nnz == 0 for start in range(0, x.shape[0], 5000))
    return same, embedding_difference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=69_249)
    parser.add_argument("--genes", type=int, default=13_431)
    parser.add_argument("--peaks", type=int, default=116_490)
    parser.add_argument("--gene-entries", type=int, default=1_000, help="stored gene counts per cell")
    parser.add_argument("--peak-entries", type=int, default=3_000, help="stored peak counts per cell")
    parser.add_argument("--model-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the data and outputs in (default: a temporary one)")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)  # internal: WAY PATH MODEL OUT
    args = parser.parse_args()
    if args.run:
        way, path, model, out = args.run
        print(json.dumps(annotate_file(way, Path(path), Path(model), Path(out), args.threads)))
        return
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "neurips_layout.h5ad"
        start = time.perf_counter()
        nnz = write_data(path, args)
        print(f"wrote {path.name}: {args.n_cells:,} cells x ({args.genes:,} genes + {args.peaks:,} peaks), {nnz:,} counts "
              f"stored twice (counts, X); {path.stat().st_size / 2**30:.2f} GiB; {time.perf_counter() - start:.0f} s")
        train_model(path, folder / "model", args)
        rows = []
        for way in ("whole", "genes"):
            result = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--run", way, str(path),
                                     str(folder / "model"), str(folder / f"{way}.h5ad")], capture_output=True, text=True)
            if result.returncode: sys.exit(result.stderr)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{way:>6}: peak RSS {row['peak_rss_gib']:.2f} GiB; read {row['read_s']:.1f} s, annotate {row['annotate_s']:.1f} s, "
                  f"write {row['write_s']:.1f} s, total {row['total_s']:.1f} s; output {(folder / f'{way}.h5ad').stat().st_size / 2**30:.2f} GiB")
        same, embedding_difference = compare_files(folder / "whole.h5ad", folder / "genes.h5ad")
        print(f"same clusters, responsibilities, obs, var and matrices: {same}; "
              f"embeddings within {embedding_difference:.1e} (float32 rounding between processes: under 1e-5 expected)")
        whole, genes = rows
        print(f"genes / whole: peak RSS {genes['peak_rss_gib'] / whole['peak_rss_gib']:.2f}x "
              f"({whole['peak_rss_gib'] - genes['peak_rss_gib']:.2f} GiB less), time {genes['total_s'] / whole['total_s']:.2f}x")


if __name__ == "__main__":
    main()
