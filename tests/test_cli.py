"The `gmvae-nb` command line, run as a user runs it: a subprocess of the installed console script."
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

CLI = str(Path(sys.executable).with_name("gmvae-nb"))


def run_cli(*args, cwd=None, umask=-1):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, umask=umask)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("simulate", "fit", "predict", "sweep", "report", "main"):
        assert command in result.stdout


HELP_WITHOUT_IMPORTS = """
import json, sys
from gmvae_nb.cli import main
for argv in (["--help"], ["--version"], *([command, "--help"] for command in ("simulate", "fit", "predict", "sweep", "report", "main"))):
    try: main(argv)
    except SystemExit as e: assert e.code == 0, (argv, e.code)
print(json.dumps(sorted(m for m in ("torch", "numpy", "pandas", "anndata", "scanpy", "papermill") if m in sys.modules)))
"""


def test_help_of_every_command_imports_neither_torch_nor_the_data_stack():
    result = subprocess.run([sys.executable, "-c", HELP_WITHOUT_IMPORTS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert "usage: gmvae-nb fit" in result.stdout and "(default: 1 10 20 30 40 50)" in result.stdout


def test_version_and_python_m():
    version = subprocess.run([sys.executable, "-c", "import gmvae_nb; print(gmvae_nb.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    assert run_cli("--version").stdout == f"gmvae-nb {version}\n"
    as_module = subprocess.run([sys.executable, "-m", "gmvae_nb", "--version"], capture_output=True, text=True)
    assert (as_module.returncode, as_module.stdout) == (0, f"gmvae-nb {version}\n")
    assert "COMMAND" in subprocess.run([sys.executable, "-m", "gmvae_nb", "--help"], capture_output=True, text=True).stdout


def test_missing_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    assert "usage: gmvae-nb" in result.stderr


def test_simulate_writes_a_readable_sparse_file(tmp_path):
    out = tmp_path / "sim.h5ad"
    result = run_cli("simulate", "--preset", "default", "--n-cells", 300, "--n-genes", 200, "--seed", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    adata = ad.read_h5ad(out)
    assert adata.shape == (300, 200)
    assert adata.layers["counts"].format == "csr"
    assert {"batch", "cell_type"} <= set(adata.obs.columns)
    assert f"300 cells x 200 genes" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5ad"]  # no temporary file left behind


def test_simulate_same_seed_same_file(tmp_path):
    paths = [tmp_path / f"{i}.h5ad" for i in range(2)]
    for p in paths:
        assert run_cli("simulate", "--n-cells", 100, "--n-genes", 50, "--seed", 7, "--out", p).returncode == 0
    a, b = (ad.read_h5ad(p).layers["counts"] for p in paths)
    assert (a != b).nnz == 0


def test_unknown_preset_fails_without_writing(tmp_path):
    out = tmp_path / "x.h5ad"
    result = run_cli("simulate", "--preset", "no-such-preset", "--out", out)
    assert result.returncode != 0
    assert "no-such-preset" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_outputs_are_created_with_the_users_umask(tmp_path):
    "Every file a command writes gets mode 0o666 less the umask, as any new file does: 0o644 under 022, not owner-only."
    data = tmp_path / "data.h5ad"
    assert run_cli("simulate", "--n-cells", 200, "--n-genes", 40, "--out", data, umask=0o022).returncode == 0
    result = run_cli("fit", data, "--out", tmp_path / "run", "-K", 2, "--epochs", 1, "--quiet", umask=0o022)
    assert result.returncode == 0, result.stderr
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert {"data.h5ad", "run/adata.h5ad", "run/model/model.pt", "run/model/config.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_fit_into_a_log_file_draws_its_bar_a_few_times_not_at_every_step(tmp_path):
    """A batch job's log keeps every redraw of a progress bar: `fit` with its stderr in a file draws its bar when it
    starts and ends (and every `LOG_REFRESH_SECONDS` between), not at each of its steps and epochs, and the last draw
    shows the last epoch and its loss terms."""
    from gmvae_nb.files import LOG_REFRESH_SECONDS

    data = tmp_path / "data.h5ad"
    assert run_cli("simulate", "--n-cells", 600, "--n-genes", 40, "--out", data).returncode == 0
    log = tmp_path / "fit.log"
    with open(log, "wb") as stderr:
        started = time.perf_counter()
        result = subprocess.run([CLI, *map(str, ("fit", data, "--out", tmp_path / "run", "-K", 2, "--epochs", 30, "--n-init", 1,
                                                 "--no-early-stopping"))], stdout=subprocess.PIPE, stderr=stderr)
        seconds = time.perf_counter() - started
    written = log.read_bytes().decode()  # not read_text, whose universal newlines turn each "\r" into a "\n"
    assert result.returncode == 0, written
    last = written.split("\r")[-1]
    assert last.startswith("epoch 30/30: 100%") and "neg_elbo=" in last, last
    steps = int(re.search(r"\| (\d+)/\1 \[", last).group(1))  # tqdm's 150/150 of 5 minibatches an epoch
    assert written.count("\r") <= 2 + seconds // LOG_REFRESH_SECONDS < steps, (written.count("\r"), seconds, steps)


def test_user_errors_are_one_line_naming_the_flag_with_exit_status_2(tmp_path):
    data = tmp_path / "data.h5ad"
    assert run_cli("simulate", "--n-cells", 100, "--n-genes", 30, "--out", data).returncode == 0
    no_gpu = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # torch then sees no CUDA GPU, on any machine
    cases = [
        (["fit", tmp_path / "missing.h5ad"], "missing.h5ad"),
        (["fit", data, "--layer", "raw"], "Use --layer X to read the counts from X"),
        (["fit", data, "--device", "cuda"], "--device cuda asked for, but this torch"),
        (["sweep", "--data", data, "-K", 0], "every K must be a positive integer"),
        # the data's checks, all before the first run: each names the option to change
        (["sweep", "--data", data, "--label-key", "celltype"],
         "obs has no label column 'celltype'; obs columns: ['batch', 'site', 'donor', 'cell_type', 'lineage', 'library_size', "
         "'n_counts']. Pass --label-key <column>, or --label-key none for unlabelled data."),
        (["sweep", "--data", data, "--batch-key", "donors"], "Pass --batch-key <column> naming the batches, or --batch-key none"),
        (["sweep", "--data", data, "--layer", "raw"], "has no layer 'raw'; its layers are ['counts']. Use --layer X"),
        (["sweep", "--data", data, "--test-fraction", 0.7], "--test-fraction must be above 0 and at most 0.5, got 0.7"),
        (["sweep", "--data", data, "--n-top-genes", -1], "--n-top-genes must be a whole number of at least 0 (0: every gene), got -1"),
        (["sweep", "--data", data], "cells, too few to score: the metrics need at least 16; pass a larger --test-fraction"),
    ]
    for argv, problem in cases:
        result = subprocess.run([CLI, *map(str, argv), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                                env=no_gpu)
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"gmvae-nb {argv[0]}: error: "), result.stderr
        assert problem in result.stderr, (problem, result.stderr)
    assert not (tmp_path / "out").exists()


def neurips_layout(cells: ad.AnnData, n_peaks: int = 200, seed: int = 0) -> ad.AnnData:
    "Simulated cells in the GEO files' layout: GEX genes, ATAC peaks and an antibody tag named as the first gene, counts in layers['counts'], log-normalised X, raw, a graph and a UMAP."
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    peaks = sp.random(cells.n_obs, n_peaks, density=0.1, format="csr", random_state=seed, data_rvs=lambda n: rng.integers(1, 4, n))
    tag = sp.csr_matrix(rng.integers(50, 100, (cells.n_obs, 1)))
    counts = sp.hstack([cells.layers["counts"], peaks.astype(np.float32), tag.astype(np.float32)], format="csr")
    var = pd.concat([cells.var.assign(feature_types="GEX"),
                     pd.DataFrame({"feature_types": "ATAC"}, index=[f"chr1-{i}" for i in range(n_peaks)]),
                     pd.DataFrame({"feature_types": "ADT"}, index=cells.var_names[:1])])
    normalised = counts.copy()
    normalised.data = np.log1p(normalised.data)
    layout = ad.AnnData(normalised, obs=cells.obs, var=var, layers={"counts": counts},
                        obsm={"X_umap": rng.normal(size=(cells.n_obs, 2))}, obsp={"connectivities": sp.eye(cells.n_obs, format="csr")},
                        varm={"PCs": rng.normal(size=(len(var), 3))}, uns={"dataset_id": "toy"})
    layout.raw = layout.copy()
    return layout


def assert_file_kept(annotated: ad.AnnData, original: ad.AnnData):
    "Everything `original` held is in `annotated` as it was."
    for name, matrix in [("X", lambda a: a.X), ("counts", lambda a: a.layers["counts"]), ("raw", lambda a: a.raw.X),
                         ("connectivities", lambda a: a.obsp["connectivities"])]:
        assert (matrix(annotated) != matrix(original)).nnz == 0, name
    np.testing.assert_array_equal(annotated.obsm["X_umap"], original.obsm["X_umap"])
    np.testing.assert_array_equal(annotated.varm["PCs"], original.varm["PCs"])
    assert annotated.uns["dataset_id"] == "toy"
    assert annotated.obs[original.obs.columns].equals(original.obs) and annotated.var[original.var.columns].equals(original.var)


def test_fit_and_predict_on_files_with_peaks_and_tags_read_only_the_genes_and_keep_the_rest(tmp_path):
    from gmvae_nb.model import GMVAE
    from gmvae_nb.simulate import simulate
    cells = simulate("default", n_cells=400, n_genes=80, n_batches=3, seed=0)
    third = (cells.obs["batch"] == cells.obs["batch"].cat.categories[2]).to_numpy()
    first, new = neurips_layout(cells[~third].copy()), neurips_layout(cells[third].copy(), seed=1)
    first.write_h5ad(tmp_path / "first.h5ad")
    fit = run_cli("fit", tmp_path / "first.h5ad", "-K", "3", "--epochs", "2", "--n-init", "1", "--out", tmp_path / "run", "--quiet")
    assert fit.returncode == 0, fit.stderr
    annotated = ad.read_h5ad(tmp_path / "run" / "adata.h5ad")
    assert_file_kept(annotated, first)
    assert annotated.var["gmvae_gene"].tolist() == [True] * 80 + [False] * 201  # the GEX features, not the tag named as one
    assert annotated.obsm["X_gmvae"].shape == (first.n_obs, 10)

    # the peaks of the new file hold values that are not counts: predict neither reads nor checks them
    new.layers["counts"][:, 80:280] = new.layers["counts"][:, 80:280] * 0.5
    new.write_h5ad(tmp_path / "new.h5ad")
    result = run_cli("predict", tmp_path / "run" / "model", tmp_path / "new.h5ad", "--out", tmp_path / "new_annotated.h5ad")
    assert result.returncode == 0, result.stderr
    annotated = ad.read_h5ad(tmp_path / "new_annotated.h5ad")
    assert_file_kept(annotated, new)
    model = GMVAE.load(tmp_path / "run" / "model", new[:, :80].copy(), device="cpu")
    np.testing.assert_array_equal(annotated.obsm["X_gmvae"], model.map_query(model.adata).get_latent())
    np.testing.assert_array_equal(annotated.obs["gmvae_cluster"].astype(int), model.predict())
    assert sorted(annotated.uns) == ["dataset_id", "gmvae"]
