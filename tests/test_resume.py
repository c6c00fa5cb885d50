"Interrupted training: a run killed mid-way and resumed from its checkpoint ends as the uninterrupted run; checkpoints are written atomically."
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gmvae_nb.checkpoints
from gmvae_nb.checkpoints import CHECKPOINT_FILE, read_checkpoint
from gmvae_nb.data import write_h5ad
from gmvae_nb.simulate import simulate
from gmvae_nb.train import TrainConfig, fit_module

CLI = str(Path(sys.executable).with_name("gmvae-nb"))
EPOCHS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    "Enough cells (24 minibatches) that an epoch takes a noticeable fraction of a second."
    return write_h5ad(simulate("default", n_cells=3000, n_genes=200, seed=0), tmp_path_factory.mktemp("data") / "sim.h5ad")


def fit_args(data: Path, out: Path, checkpoints: Path, *extra) -> list[str]:
    return [CLI, "fit", str(data), "--out", str(out), "-K", "4", "--epochs", str(EPOCHS), "-M", "2", "--n-x", "10",
            "--n-w", "5", "--seed", "3", "--quiet", "--checkpoint-dir", str(checkpoints), *extra]


def _one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=_one_thread())
    assert result.returncode == 0, result.stderr
    return result


def test_killed_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    run(fit_args(data, tmp_path / "whole", tmp_path / "whole-checkpoints"))

    killed = subprocess.Popen(fit_args(data, tmp_path / "resumed", tmp_path / "checkpoints"), env=_one_thread(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / CHECKPOINT_FILE).exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    killed.kill()  # SIGKILL: no cleanup runs
    killed.wait()
    reached = read_checkpoint(tmp_path / "checkpoints")["run"]["epoch"]
    assert 1 <= reached < EPOCHS, f"killed at epoch {reached}, not mid-run"
    assert not (tmp_path / "resumed" / "model").exists()

    run(fit_args(data, tmp_path / "resumed", tmp_path / "checkpoints", "--resume"))
    whole, resumed = (torch.load(tmp_path / name / "model" / "model.pt", weights_only=True) for name in ("whole", "resumed"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), f"{name} differs after resuming from epoch {reached}"
    histories = [pd.read_csv(tmp_path / name / "model" / "history.csv").drop(columns="seconds") for name in ("whole", "resumed")]
    pd.testing.assert_frame_equal(*histories, check_exact=True)
    assert len(histories[0]) == EPOCHS


def test_resume_without_a_checkpoint_starts_afresh(data, tmp_path):
    result = run(fit_args(data, tmp_path / "out", tmp_path / "empty", "--resume", "--epochs", "1"))
    assert f"no checkpoint in '{tmp_path / 'empty'}' to resume from: training from the first epoch" in result.stderr
    assert read_checkpoint(tmp_path / "empty")["run"]["epoch"] == 1


def test_resume_of_another_run_names_the_difference(data, tmp_path):
    run(fit_args(data, tmp_path / "out", tmp_path / "checkpoints", "--epochs", "1"))
    args = fit_args(data, tmp_path / "out", tmp_path / "checkpoints", "--resume")
    args[args.index("-K") + 1] = "5"
    result = subprocess.run(args, capture_output=True, text=True, env=_one_thread())
    assert result.returncode == 2
    assert "its model.n_clusters is 4, this run's is 5" in result.stderr and "pass another --checkpoint-dir" in result.stderr


# --- atomic writes -------------------------------------------------------------------------------------------

SLOW_SECOND_WRITE = """
import sys, time
from pathlib import Path
import torch
from gmvae_nb.model import GMVAE
from gmvae_nb.simulate import simulate

folder, marker = Path(sys.argv[1]), Path(sys.argv[2])
real_save, writes = torch.save, []
def save(obj, path):
    "The second checkpoint write stops half-way (and waits to be killed)."
    writes.append(path)
    if len(writes) < 2: return real_save(obj, path)
    real_save(obj, path)
    Path(path).write_bytes(Path(path).read_bytes()[:1000])
    marker.touch()
    time.sleep(600)
torch.save = save
adata = simulate("default", n_cells=300, n_genes=50, seed=0)
GMVAE(adata, n_clusters=3, n_x=4, n_w=3).fit(max_epochs=3, n_samples=1, device="cpu", progress=False, checkpoint_dir=folder)
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    folder, marker = tmp_path / "checkpoints", tmp_path / "writing"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_SECOND_WRITE, str(folder), str(marker)], env=_one_thread())
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert writer.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    writer.kill()
    writer.wait()
    assert read_checkpoint(folder)["run"]["epoch"] == 1  # the first checkpoint, whole
    partial = [p for p in folder.iterdir() if p.name != CHECKPOINT_FILE]
    assert len(partial) == 1 and partial[0].stat().st_size == 1000  # the cut-short write went to a temporary file


def test_failed_checkpoint_write_keeps_the_previous_one_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    counts, codes = rng.poisson(1.0, (64, 20)).astype(np.float32), np.zeros(64, dtype=np.int64)
    from gmvae_nb.modules import GMVAEModule
    module = GMVAEModule(20, 1, n_clusters=2, n_x=3, n_w=2, encoder_hidden=(8,), decoder_hidden=(8,), beta_hidden=(8,))
    real_save = torch.save
    def save(obj, path):
        if obj["run"]["epoch"] == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError("No space left on device")
        real_save(obj, path)
    monkeypatch.setattr(gmvae_nb.checkpoints.torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        fit_module(module, counts, codes, config=TrainConfig(max_epochs=3, n_samples=1), device="cpu", progress=False,
                   checkpoint_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert read_checkpoint(tmp_path)["run"]["epoch"] == 1
