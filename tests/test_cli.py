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
