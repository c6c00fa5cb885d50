"The report of a sweep: executed by papermill, rendered to one self-contained HTML page."
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

from gmvae_nb.metrics import METRICS
from gmvae_nb.model import GMVAE
from gmvae_nb.report import render_report, software_versions
from gmvae_nb.sweep import choose_k, cluster_stability, collect, recommend_k, sweep


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    from gmvae_nb.simulate import simulate
    root = tmp_path_factory.mktemp("report")
    data = root / "tiny.h5ad"
    simulate("default", n_cells=1000, n_genes=300, n_types=3, n_batches=2, seed=1).write_h5ad(data)
    # enough training that the clusters have markers to rank (K = 3: 610, 348 and 42 cells here)
    table = sweep(data, Ks=[2, 3], repeats=2, out=root / "sweep", workers=2,
                  max_epochs=10, lr=3e-3, n_samples=2, n_x=4, n_w=3)
    assert (table.status == "done").all()
    return root / "sweep"


def copy_of(sweep_folder: Path, out: Path) -> Path:
    "A copy of a finished sweep's inputs to the report (no report), to change without touching the original."
    return Path(shutil.copytree(sweep_folder, out, ignore=shutil.ignore_patterns("report.*")))


def without_labels(sweep_folder: Path) -> Path:
    "The sweep as it would be on data without cell-type labels: none in data.h5ad, test_cells.csv or metrics.json."
    data = ad.read_h5ad(sweep_folder / "data.h5ad")
    del data.obs["cell_type"]
    data.write_h5ad(sweep_folder / "data.h5ad")
    label_free = {key for key, metric in METRICS.items() if not metric.needs_labels}
    for run in (sweep_folder / "runs").iterdir():
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                      if k not in METRICS or k in label_free}))
        cells = pd.read_csv(run / "test_cells.csv", index_col=0)
        cells.drop(columns="cell_type").to_csv(run / "test_cells.csv")
    return sweep_folder


def headings(html: str) -> list[str]:
    "The text of the page's h1 and h2 headings, in order."
    return [re.sub(r"<[^>]+>|¶", "", h).strip() for h in re.findall(r"<h[12][^>]*>(.*?)</h[12]>", html, re.S)]


def table_rows(html: str, css_class: str) -> list[list[str]]:
    "The body rows of the page's table of `css_class`, each cell's text (row header first)."
    block = html[html.index(css_class):]
    block = block[block.index("<tbody>"):block.index("</tbody>")]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", block, re.S)]


LABEL_FREE = ["Summary", "The data", "The cells in the model's embedding", "Cluster sizes and clusters used",
              "Marker genes per cluster", "Clusters and batches", "Choosing K: held-out ELBO and stability across seeds",
              "What the model removes: batch", "Training: the four terms of the loss", "The K sweep", "Baselines",
              "Conclusions", "Software"]
WITH_LABELS = ["Clusters and cell types", "The z-prior term against the clustering scores"]


def assert_a_self_contained_page(html: str, title: str, sweep_folder: Path):
    "The page is titled `title`, embeds its figures, hides its code, shows no absolute path and lists the software."
    assert re.search(r"<title>(.*?)</title>", html).group(1) == title
    assert headings(html)[0] == title
    figures = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(figures) >= 8 and all(src.startswith("data:image/png;base64,") for src in figures)
    assert "<script src=" not in html.split("</head>")[1]  # no code cell leaked into the body
    assert str(sweep_folder.parent) not in html and str(sweep_folder.resolve().parent) not in html
    assert f"<code>runs/{shown_run(sweep_folder)[0]}/</code>" in html  # a run is named by its path in the sweep folder
    versions = dict(table_rows(html, "versions-table"))
    assert versions == software_versions().to_dict() and "scib-metrics" in versions and "torch" in versions


def sweep_table(html: str) -> pd.DataFrame:
    "The K-sweep table of the page: one row per K, cells as displayed."
    block = html[html.index("sweep-table"):]
    block = block[:block.index("</table>")]
    cells = lambda row, tag: [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", row, re.S)]
    header = cells(block.split("</tr>")[0], "th")
    rows = [cells(r, "th") + cells(r, "td") for r in re.findall(r"<tr>(.*?)</tr>", block.split("</thead>")[1], re.S)]
    return pd.DataFrame([r[1:] for r in rows], index=[int(r[0]) for r in rows], columns=header[-len(rows[0]) + 1:])


def test_report_html_holds_the_sweep_table_and_embeds_its_figures(finished_sweep):
    html = render_report(finished_sweep, renderer="nbconvert").read_text()
    assert (finished_sweep / "report.ipynb").exists()  # the executed report is kept beside the page
    title = "Clustering cells with a Gaussian-mixture VAE: how many clusters?"
    assert_a_self_contained_page(html, title, finished_sweep)
    runs = collect(finished_sweep)  # 10 epochs each, 70 for a kept restart that pretrained 60 before its mixture's start
    from_x = runs.kept_init_mixture.eq("gmm")
    pretrained = (rf" \({from_x.sum()} of 4 runs kept a restart that trained 60 epochs before its mixture started from a "
                  r"Gaussian mixture on x; the range includes them\)") if from_x.any() else ""
    assert re.search(rf"trained for {runs.epochs.min()}(–{runs.epochs.max()})? epochs{pretrained} with M = 2 samples, n_x = 4, "
                     r"n_w = 3\.", html)  # the sweep's settings
    assert headings(html) == [title, LABEL_FREE[0], "The model in brief", *LABEL_FREE[1:6], WITH_LABELS[0],
                              *LABEL_FREE[6:10], WITH_LABELS[1], *LABEL_FREE[10:]]
    table = sweep_table(html)
    for K, group in runs.groupby("n_clusters"):
        for column, key in [("ARI", "ari_kmeans_best"), ("Leiden r1 ARI", "ari_leiden_r1"), ("batch ASW", "asw_batch"),
                            ("own NMI", "nmi_own_clusters")]:
            mean, sd = group[key].mean(), group[key].std(ddof=1)
            assert table.loc[K, column] == f"{mean:.3f} ± {sd:.3f}"
        assert table.loc[K, "−ELBO"].startswith(f"{group['neg_elbo_per_cell'].mean():.1f}")
    choice = choose_k(runs, stability=cluster_stability(finished_sweep))
    assert f"Recommended K = {choice.k}</strong>, chosen without labels: {choice.reason}." in html  # the rule's own words
    assert f"K = 3: {cluster_stability(finished_sweep).loc[3, 'stability']:.2f}" in html
    own = runs.loc[runs.n_clusters == choice.k, "ari_own_clusters"].mean()  # held against Leiden's default clustering
    assert re.search(rf"At the recommended K = {choice.k} the model's own clusters reach ARI {own:.3f} with the cell "
                     r"types \(mean over seeds\), against Leiden at resolution 1, scanpy's default clustering: -?\d\.\d{3} on the "
                     r"unintegrated PCA( and -?\d\.\d{3} on scVI)?, on the same test cells", html)
    run, K = shown_run(finished_sweep)  # the commands that come next: the sweep's file and folder, read as the sweep read them
    assert (f"<code>gmvae-nb fit tiny.h5ad -K {K} --out sweep_K{K}</code>" in html
            and f"<code>gmvae-nb predict sweep/runs/{run}/model NEW.h5ad --out NEW_annotated.h5ad</code>" in html)
    assert_the_shown_run_on_every_cell(html, finished_sweep)


def shown_run(sweep_folder: Path) -> tuple[str, int]:
    "The run the report shows (the recommended K's first seed) and its K."
    runs = collect(sweep_folder)
    K = recommend_k(runs, stability=cluster_stability(sweep_folder))
    return runs[runs.n_clusters == K].sort_values("seed").index[0], K


def assert_the_shown_run_on_every_cell(html: str, sweep_folder: Path):
    "The summary and the marker table count the clusters of every cell as the shown run's saved model assigns them."
    run, K = shown_run(sweep_folder)
    data = ad.read_h5ad(sweep_folder / "data.h5ad")
    GMVAE.load(sweep_folder / "runs" / run / "model", data).predict(data)
    sizes = data.obs["gmvae_cluster"].value_counts()
    sizes = sizes[sizes > 0]
    assert f"Clusters used: {len(sizes)} of K = {K}</strong> hold cells among all {data.n_obs:,} cells" in html
    if (sizes >= 3).sum() < 2:
        assert "there are no clusters to contrast, so no marker genes" in html
        return
    markers = {row[0]: row for row in table_rows(html, "marker-table")}
    assert {cluster: int(row[1]) for cluster, row in markers.items()} == sizes[sizes >= 3].to_dict()
    genes = [re.findall(r"(\S+) \([+-]", row[-1]) for row in markers.values()]
    assert all(len(top) == 5 and set(top) <= set(data.var_names) for top in genes)


def test_report_of_unlabelled_data_has_the_label_free_sections(finished_sweep, tmp_path):
    unlabelled = without_labels(copy_of(finished_sweep, tmp_path / "unlabelled"))
    for i, metrics in enumerate(sorted(unlabelled.glob("runs/*/metrics.json"))):  # one run kept a restart started from x
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"kept_init_mixture": "gmm" if i == 1 else None,
                                                                         "init_epochs": 60, "epochs": 70 if i == 1 else 10}))
    html = render_report(unlabelled, title="Cells without labels", renderer="nbconvert").read_text()
    assert_a_self_contained_page(html, "Cells without labels", unlabelled)
    assert headings(html) == ["Cells without labels", LABEL_FREE[0], "The model in brief", *LABEL_FREE[1:]]
    assert ("trained for 10–70 epochs (1 of 4 runs kept a restart that trained 60 epochs before its mixture started from "
            "a Gaussian mixture on x; the range includes them) with M = 2 samples") in html
    assert "none: the data have no cell-type labels" in html
    assert list(sweep_table(html).columns) == ["kBET (all cells)", "iLISI", "−ELBO", "runs"]
    assert_the_shown_run_on_every_cell(html, unlabelled)


def test_report_of_runs_without_a_saved_model_shows_their_test_cells(finished_sweep, tmp_path):
    old = copy_of(finished_sweep, tmp_path / "old")
    for model in old.glob("runs/*/model"): shutil.rmtree(model)
    for i, metrics in enumerate(sorted(old.glob("runs/*/metrics.json"))):  # runs that early stopping ended apart, written
        run = json.loads(metrics.read_text()) | {"epochs": 7 if i == 0 else 12}  # before the kept restart's start was recorded
        metrics.write_text(json.dumps({key: value for key, value in run.items() if key != "kept_init_mixture"}))
    html = render_report(old, renderer="nbconvert").read_text()
    assert "trained for 7–12 epochs with M = 2 samples" in html  # the runs' range, no count of runs started from x
    run, K = shown_run(old)
    n_test = int(collect(old).loc[run, "n_test_cells"])
    assert f"<code>runs/{run}/</code> holds no saved model" in html
    assert f"hold cells among the {n_test:,} test cells" in html
    clusters = pd.read_csv(old / "runs" / run / "test_cells.csv", index_col=0)["gmvae_cluster"].value_counts()
    assert {int(row[0]): int(row[1]) for row in table_rows(html, "marker-table")} == clusters[clusters >= 3].to_dict()


def test_quarto_is_used_when_it_is_on_the_path(finished_sweep, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "quarto"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n# quarto render NOTEBOOK --to html --no-execute\n'
                    'echo "<html>rendered by quarto from $(basename $2) with $6 $7</html>" > "${2%.ipynb}.html"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    out = render_report(finished_sweep, out=tmp_path / "page.html")
    title = "Clustering cells with a Gaussian-mixture VAE: how many clusters?"
    assert out.read_text().strip() == f"<html>rendered by quarto from report.ipynb with -M pagetitle:{title}</html>"


def test_report_of_an_empty_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        render_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_report_is_one_line_naming_the_cell_and_the_executed_notebook(finished_sweep, tmp_path):
    broken = copy_of(finished_sweep, tmp_path / "broken")
    run, _ = shown_run(broken)
    (broken / "runs" / run / "latent.npz").unlink()
    cli = str(Path(sys.executable).with_name("gmvae-nb"))
    result = subprocess.run([cli, "report", str(broken), "--renderer", "nbconvert"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert re.fullmatch(rf"gmvae-nb report: error: the report notebook failed in cell \[\d+\] with FileNotFoundError: "
                        rf".*latent\.npz.* \(the executed notebook {broken / 'report.ipynb'} shows the failing cell\)\n",
                        result.stderr), result.stderr
    assert not (broken / "report.html").exists()  # no page for a report that did not finish
