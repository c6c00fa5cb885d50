"""The K sweep as a user runs it: `gmvae-nb sweep` executing the training notebook through papermill,
killed and resumed, and the same runs on a Dask LocalCluster."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from gmvae_nb.metrics import METRICS
from gmvae_nb.sweep import choose_k, cluster_stability, collect, run_status, summarize, sweep

CLI = str(Path(sys.executable).with_name("gmvae-nb"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    from gmvae_nb.simulate import simulate
    simulate("default", n_cells=1000, n_genes=80, n_types=3, n_batches=2, seed=0).write_h5ad(path)
    return path


def sweep_cli(data, out, *extra):
    return [CLI, "sweep", "--data", str(data), "--out", str(out), "--epochs", "2", "--n-samples", "2",
            "--n-x", "4", "--n-w", "3", "--init-mixture", "none", *map(str, extra)]  # restarts of 2 epochs each, no pretraining


def test_two_by_two_sweep_through_papermill(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(sweep_cli(tiny_data, out, "--K", 1, 3, "--repeats", 2, "--workers", 2, "--components-per-cluster", 1),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[IPKernelApp]" not in result.stderr  # the kernels' logs are in the run folders (run.log), not on the terminal
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["K001_seed0", "K001_seed1", "K003_seed0", "K003_seed1"]
    for run in runs:
        folder = out / "runs" / run
        assert (folder / "run.ipynb").exists()  # the executed notebook is kept
        history = pd.read_csv(folder / "history.csv")
        assert len(history) == 2
        assert json.loads((folder / "progress.json").read_text()) == {"epoch": 2, "max_epochs": 2, "stage": "restart 3/3"}  # what the bar showed
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n_clusters"] == int(run[1:4]) and metrics["seed"] == int(run[-1])
        assert metrics["components_per_cluster"] == 1  # the option reaches the model, which saves it
        assert json.loads((folder / "model" / "config.json").read_text())["model"]["components_per_cluster"] == 1
        assert metrics["n_communities"] is None  # one component per cluster: nothing merged
        cells = pd.read_csv(folder / "test_cells.csv", index_col=0)  # the scored cells, one row each
        assert len(cells) == metrics["n_test_cells"]
        assert metrics["ari_own_clusters"] == pytest.approx(adjusted_rand_score(cells.cell_type, cells.gmvae_cluster))
    table = collect(out)
    assert len(table) == 4
    choice = choose_k(table, stability=cluster_stability(out))
    assert f"recommended K = {choice.k}: {choice.reason}\n" in result.stdout  # the K and the branch of the rule that chose it
    summary = summarize(table)
    assert list(summary.index) == [1, 3]
    assert (summary[("runs", "n")] == 2).all()


def test_sweep_resumes_after_a_killed_run(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cli(tiny_data, out, "--K", 2, 4, "--repeats", 2, "--workers", 1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "runs" / "K002_seed0" / "metrics.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert first.exists(), "the first run never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the kernel of the run in progress
    proc.wait()
    statuses = [run_status(p) for p in sorted((out / "runs").iterdir())]
    assert statuses[0] == "done" and "pending" in statuses + ["pending"] * (4 - len(statuses))
    finished_at = first.stat().st_mtime_ns

    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert first.stat().st_mtime_ns == finished_at  # the finished run was skipped, not redone
    assert [run_status(p) for p in sorted((out / "runs").iterdir())] == ["done"] * 4
    assert "skipped 1" in result.stdout


def test_failed_run_is_reported_and_others_finish(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    # K larger than the number of latent dimensions is fine, but a negative learning rate is refused by Adam
    result = subprocess.run(sweep_cli(tiny_data, out, "--K", 2, "--repeats", 1, "--lr", -1), capture_output=True, text=True)
    assert result.returncode == 1
    assert "K002_seed0" in result.stdout and "failed" in result.stdout
    assert "K002_seed0: failed in " in result.stdout and "its error is in runs/K002_seed0/error.txt" in result.stdout
    assert f"1 failed: K002_seed0; each left its error in {out}/runs/<run>/error.txt" in result.stdout.splitlines()[-1]
    assert "[IPKernelApp]" not in result.stderr
    assert (out / "runs" / "K002_seed0" / "error.txt").exists()


def test_dask_local_cluster_runs_the_same_sweep(tiny_data, tmp_path):
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        table = sweep(tiny_data, Ks=[1, 2], repeats=1, out=tmp_path / "sweep", scheduler=cluster.scheduler_address,
                      max_epochs=2, n_samples=2, n_x=4, n_w=3, threads=1)
    assert table.status.tolist() == ["done", "done"]
    metrics = collect(tmp_path / "sweep")
    assert sorted(metrics.n_clusters) == [1, 2]


def test_training_notebook_runs_alone_on_a_preset(tmp_path):
    import papermill as pm
    from gmvae_nb.sweep import RUN_NOTEBOOK
    pm.execute_notebook(str(RUN_NOTEBOOK), str(tmp_path / "run.ipynb"), progress_bar=False,
                        parameters={"data": "preset:default", "out": str(tmp_path), "n_clusters": 2,
                                    "max_epochs": 1, "n_samples": 1, "n_x": 4, "n_w": 3, "threads": 1, "n_init": 3,
                                    "init_epochs": 2})  # the third restart trains 2 epochs before its mixture starts from x
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test_cells"] == 200  # the default preset's 2,000 cells, split 80/10/10
    assert metrics["n_init"] == 3
    assert metrics["components_per_cluster"] == 2  # the default
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["training"]
    assert metrics["init_mixture"] == "mixed" and saved["restart_init_mixture"] == [None, None, "gmm"]  # the setting
    assert metrics["kept_init_mixture"] == saved["init_mixture"] == saved["restart_init_mixture"][saved["restart_chosen"]]  # the kept one's
    assert metrics["n_communities"] == saved["n_communities"] >= 1  # the communities the merged components form
    assert metrics["epochs"] == len(pd.read_csv(tmp_path / "history.csv")) == (3 if metrics["kept_init_mixture"] == "gmm" else 1)
    assert (tmp_path / "data.h5ad").exists()


def test_each_kernel_starts_in_its_run_folder_and_the_sweep_never_moves_this_process(tiny_data, tmp_path, monkeypatch):
    "Two runs side by side: os.chdir is process-wide, so a sweep that moved into each run's folder raced between its threads."
    import nbformat
    notebook = tmp_path / "where.ipynb"
    parameters = nbformat.v4.new_code_cell('out = "."', metadata={"tags": ["parameters"]})
    report_cwd = nbformat.v4.new_code_cell('import json, os\njson.dump({"cwd": os.getcwd()}, open("metrics.json", "w"))')
    nbformat.write(nbformat.v4.new_notebook(cells=[parameters, report_cwd],
                                            metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}),
                   notebook)
    here, chdir = Path.cwd(), os.chdir
    def only_here(path):  # papermill re-enters the current folder around its file reads: harmless, the rest is not
        if Path(path).resolve() != here.resolve(): raise AssertionError(f"the sweeping process moved to {path}")
        chdir(path)
    monkeypatch.setattr(os, "chdir", only_here)
    out = tmp_path / "sweep"
    table = sweep(tiny_data, Ks=[1, 2], repeats=1, out=out, workers=2, notebook=notebook)
    assert (table.status == "done").all(), table
    for run in table.index:
        assert Path(json.loads((out / "runs" / run / "metrics.json").read_text())["cwd"]).resolve() == (out / "runs" / run).resolve()


def their_data(path, n_cells):
    "A user's file: counts in X (no layers), batches in obs['donor'], no cell-type labels."
    from gmvae_nb.simulate import simulate
    simulated = simulate("default", n_cells=n_cells, n_genes=40, n_types=3, n_batches=2, seed=1)
    ad.AnnData(X=simulated.layers["counts"], obs=pd.DataFrame({"donor": simulated.obs["batch"].to_numpy()},
                                                              index=simulated.obs_names)).write_h5ad(path)
    return path


def test_sweep_and_report_on_their_keys_with_counts_in_x_and_no_labels(tmp_path):
    "400 cells: 40 test cells, fewer than the 90 neighbours of the metrics, which use 39; every run keeps its model; the report shows the label-free sections."
    from test_report import LABEL_FREE, headings
    from gmvae_nb.model import GMVAE
    out = tmp_path / "sweep"
    data = their_data(tmp_path / "theirs.h5ad", 400)
    result = subprocess.run(sweep_cli(data, out, "-K", 2, 3, "--repeats", 1, "--workers", 2, "--layer", "X",
                                      "--batch-key", "donor"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: obs has no 'cell_type' column, so the sweep runs without cell-type labels" in result.stdout
    assert "recommended K" in result.stdout
    prepared = ad.read_h5ad(out / "data.h5ad")
    assert list(prepared.obs.columns) == ["batch", "split"] and list(prepared.layers) == ["counts"]
    assert prepared.uns["sweep_data"]["labelled"] == False  # noqa: E712 (a numpy bool)
    test = prepared[prepared.obs["split"] == "test"].copy()
    label_free = {key for key, metric in METRICS.items() if not metric.needs_labels}
    for run in ("K002_seed0", "K003_seed0"):
        folder = out / "runs" / run
        metrics = json.loads((folder / "metrics.json").read_text())
        assert label_free <= set(metrics) and not any(METRICS[key].needs_labels for key in set(metrics) & set(METRICS))
        assert (metrics["n_test_cells"], metrics["n_neighbors"]) == (40, 39) and np.isfinite(metrics["ilisi"])
        assert list(pd.read_csv(folder / "test_cells.csv", index_col=0).columns) == ["batch", "gmvae_cluster", "neg_elbo"]
        model = GMVAE.load(folder / "model", prepared, device="cpu")
        assert model.n_clusters == metrics["n_clusters"] and len(model.history) == 2
        latent = np.load(folder / "latent.npz")
        np.testing.assert_allclose(model.get_latent(test[latent["obs_names"]].copy()), latent["X_gmvae"], rtol=1e-5, atol=1e-6)
    report = subprocess.run([CLI, "report", str(out), "--title", "Their cells", "--renderer", "nbconvert"],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (out / "report.html").read_text()
    assert headings(html) == ["Their cells", LABEL_FREE[0], "The model in brief", *LABEL_FREE[1:]]
    assert "none: the data have no cell-type labels" in html
    # the report's next command, run as it reads from the folder that holds the sweep: a run's model applied to the
    # user's own file, which keeps the counts in X and the batches in obs['donor']
    command = re.search(r"<code>(gmvae-nb predict sweep/runs/(\w+)/model NEW.h5ad --layer X --batch-key donor "
                        r"--out NEW_annotated.h5ad)</code>", html)
    assert command, re.findall(r"<code>gmvae-nb [^<]*</code>", html)
    predict = [CLI, *command[1].replace("NEW", "theirs").split()[1:]]
    without_keys = [word for word in predict if word not in ("--layer", "X", "--batch-key", "donor")]
    result = subprocess.run(without_keys, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "put this data's raw counts there, or name the layer that holds them with --layer" in result.stderr
    result = subprocess.run(predict, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "mapped" not in result.stdout, result.stderr[-3000:]
    annotated = ad.read_h5ad(tmp_path / "theirs_annotated.h5ad")
    assert annotated.n_obs == 400 and annotated.uns["gmvae"]["params"]["batch_key"] == "donor"
    latent = np.load(out / "runs" / command[2] / "latent.npz")
    np.testing.assert_allclose(annotated[latent["obs_names"]].obsm["X_gmvae"], latent["X_gmvae"], rtol=1e-5, atol=1e-6)


def test_data_too_small_to_score_fail_before_any_training(tmp_path):
    out = tmp_path / "sweep"
    data = their_data(tmp_path / "theirs.h5ad", 150)
    result = subprocess.run(sweep_cli(data, out, "-K", 2, "--repeats", 1, "--layer", "X", "--batch-key", "donor"),
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert ("the test split has 14 of the 150 cells, too few to score: the metrics need at least 16; "
            "pass a larger --test-fraction (now --test-fraction 0.1) or more cells") in result.stderr
    assert not out.exists()  # nothing prepared, no run started


def test_one_sample_without_batches_or_labels_sweeps_and_reports_without_batch_scores(tmp_path):
    "--batch-key none: one batch, so no key of the metrics that need batches (not NaN), and the report says why."
    out = tmp_path / "sweep"
    data = their_data(tmp_path / "theirs.h5ad", 400)
    result = subprocess.run(sweep_cli(data, out, "-K", 2, "--repeats", 1, "--layer", "X", "--batch-key", "none"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "runs" / "K002_seed0" / "metrics.json").read_text())
    assert set(metrics) & set(METRICS) == {"n_neighbors"}  # neither labels nor batches: only the neighbour count
    assert all(np.isfinite(value) for value in metrics.values() if isinstance(value, float))
    report = subprocess.run([CLI, "report", str(out), "--renderer", "nbconvert"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (out / "report.html").read_text()
    assert "The data are one batch" in html and "nan" not in re.sub(r"<[^>]+>", " ", html).split()
