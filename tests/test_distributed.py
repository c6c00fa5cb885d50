"""Data-parallel training under torchrun: 2 gloo processes on the CPU train the model a single process trains.

Tolerance. With dropout off and every cell getting the noise it gets in one process (see the train notebook),
two processes compute the same minibatch gradients as one, summed in another order: float32 rounding
(~1e-7 relative per step) is the only difference, and after 4 epochs of Adam the held-out -ELBO agrees to about
1e-7 relative and the weights to about 1e-7 absolute. The test allows 1e-5 and 1e-4, a hundred times more. The fit
trains fit's default three restarts, the third with its mixture fitted to x after 2 epochs; after the default 60
epochs the rounding has grown enough that the weights end 5e-4 apart (the -ELBO still within 1e-5).
Processes that do not average their gradients (each trains on its half of every minibatch) end 2e-3 relative
apart on the held-out -ELBO and 3e-2 apart on the weights: the test checks that this failure is caught.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gmvae_nb.data import write_h5ad
from gmvae_nb.simulate import simulate
from gmvae_nb.checkpoints import read_checkpoint

SCRIPT = Path(__file__).with_name("distributed_fit.py")
CLI = str(Path(sys.executable).with_name("gmvae-nb"))
ELBO_RTOL, WEIGHTS_ATOL = 1e-5, 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fitted(out: Path) -> tuple[float, dict, dict]:
    result = json.loads((out / "result.json").read_text())
    return result["neg_elbo"], result["history"], torch.load(out / "weights.pt", weights_only=True)


def weights_gap(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return fitted(out)


def test_two_processes_train_the_single_process_model(single, tmp_path):
    torchrun(SCRIPT, tmp_path)
    (elbo, history, weights), (elbo_1, history_1, weights_1) = fitted(tmp_path), single
    assert elbo == pytest.approx(elbo_1, rel=ELBO_RTOL)
    assert weights_gap(weights, weights_1) < WEIGHTS_ATOL
    for column in ("train_neg_elbo", "validation_neg_elbo"):  # the history adds up both processes' cells
        assert history[column] == pytest.approx(history_1[column], rel=ELBO_RTOL)


def test_processes_that_do_not_average_their_gradients_are_caught(single, tmp_path):
    torchrun(SCRIPT, tmp_path, "--no-sync")
    (elbo, _, weights), (elbo_1, _, weights_1) = fitted(tmp_path), single
    assert elbo != pytest.approx(elbo_1, rel=ELBO_RTOL)
    assert weights_gap(weights, weights_1) > WEIGHTS_ATOL


def test_cli_under_torchrun_writes_from_rank_0_and_resumes(tmp_path):
    "The documented launch, torchrun --no-python gmvae-nb fit …: rank 0 alone writes the outputs and checkpoints, and a run stopped after 2 of 4 epochs and resumed on 2 processes ends as the uninterrupted one, bit for bit."
    data = write_h5ad(simulate("default", n_cells=400, n_genes=100, seed=0), tmp_path / "sim.h5ad")
    def fit(out, epochs, *extra):
        return torchrun("--no-python", CLI, "fit", data, "--out", tmp_path / out, "-K", "3", "--epochs", epochs, "-M", "1",
                        "--n-x", "8", "--n-w", "4", "--quiet", *extra)
    fit("whole", 4, "--n-init", "1")  # one model, as a checkpointed run trains; its KL warm-up is a quarter of 4 epochs
    result = fit("half", 2, "--warmup-epochs", "1", "--checkpoint-dir", tmp_path / "checkpoints")  # stopped halfway
    assert result.stdout.count("fitted K=3 to 400 cells x 100 genes in 2 epochs") == 1
    assert sorted(p.name for p in (tmp_path / "half").iterdir()) == ["adata.h5ad", "model"]
    checkpoint = read_checkpoint(tmp_path / "checkpoints")
    assert checkpoint["run"]["epoch"] == 2 and len(checkpoint["dropout_rng"]) == 2  # both processes' dropout streams
    fit("resumed", 4, "--checkpoint-dir", tmp_path / "checkpoints", "--resume")  # with the checkpoint's warm-up
    whole, resumed = (torch.load(tmp_path / out / "model" / "model.pt", weights_only=True) for out in ("whole", "resumed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_cli_on_two_nodes_meeting_by_rendezvous(tmp_path):
    "The documented multi-node launch (--nnodes, --rdzv-backend c10d, --rdzv-endpoint), both nodes on this machine."
    data = write_h5ad(simulate("default", n_cells=400, n_genes=100, seed=0), tmp_path / "sim.h5ad")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test",
                               "--no-python", CLI, "fit", str(data), "--out", str(tmp_path / "run"), "-K", "3",
                               "--epochs", "2", "-M", "1", "--n-x", "8", "--n-w", "4", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("fitted K=3 to 400 cells") for out, _ in outputs) == 1  # one node holds rank 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
