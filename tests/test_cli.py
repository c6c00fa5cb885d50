"The `gmvae-nb` command line, run as a user runs it: a subprocess of the installed console script."
import os
import shutil
import stat
import subprocess
import sys
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
    for command in ("simulate", "main"):
        assert command in result.stdout


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
