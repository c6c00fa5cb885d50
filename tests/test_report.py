"The report of a sweep: executed by papermill, rendered to one self-contained HTML page."
import json
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest

from gmvae_nb.report import render_report
from gmvae_nb.sweep import cluster_stability, collect, recommend_k, sweep


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    from gmvae_nb.simulate import simulate
    root = tmp_path_factory.mktemp("report")
    data = root / "tiny.h5ad"
    simulate("default", n_cells=1000, n_genes=80, n_types=3, n_batches=2, seed=1).write_h5ad(data)
    table = sweep(data, Ks=[1, 3], repeats=2, out=root / "sweep", workers=2,
                  max_epochs=2, n_samples=2, n_x=4, n_w=3)
    assert (table.status == "done").all()
    return root / "sweep"


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
    for section in ("The model in brief", "The data", "The K sweep", "Baselines", "Conclusions"):
        assert section in html
    figures = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(figures) >= 5 and all(src.startswith("data:image/png;base64,") for src in figures)
    table = sweep_table(html)
    runs = collect(finished_sweep)
    for K, group in runs.groupby("n_clusters"):
        for column, key in [("ARI", "ari_kmeans_best"), ("batch ASW", "asw_batch"), ("own NMI", "nmi_own_clusters")]:
            mean, sd = group[key].mean(), group[key].std(ddof=1)
            assert table.loc[K, column] == f"{mean:.3f} ± {sd:.3f}"
        assert table.loc[K, "−ELBO"].startswith(f"{group['neg_elbo_per_cell'].mean():.1f}")
    assert "<script src=" not in html.split("</head>")[1]  # no code cell leaked into the body
    assert f"Recommended K = {recommend_k(runs, stability=cluster_stability(finished_sweep))}</strong>, without labels" in html
    assert f"K = 3: {cluster_stability(finished_sweep).loc[3]:.2f}" in html


def test_quarto_is_used_when_it_is_on_the_path(finished_sweep, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "quarto"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n# quarto render NOTEBOOK --to html --no-execute\n'
                    'echo "<html>rendered by quarto from $(basename $2)</html>" > "${2%.ipynb}.html"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    out = render_report(finished_sweep, out=tmp_path / "page.html")
    assert out.read_text().strip() == "<html>rendered by quarto from report.ipynb</html>"


def test_report_of_an_empty_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        render_report(tmp_path)
    assert list(tmp_path.iterdir()) == []
