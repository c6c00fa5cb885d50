"The metrics from outside: toy embeddings with known answers, agreement with scib-metrics, determinism, bad input."
import warnings

import numpy as np
import pandas as pd
import pytest
import scib_metrics
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from gmvae_nb.metrics import (
    GRAPH_NEIGHBORS, KBET_NEIGHBORS, METRICS, MIN_CELLS, batch_asw, evaluate, exact_neighbors, ilisi, isolated_label_asw,
    kbet_acceptance, kbet_per_label, knn_connectivities, leiden_scores, scaled_silhouettes, toy_embedding,
)

TOYS = {  # name: (label_scale, batch_scale)
    "perfect": (10.0, 0.0),  # well-separated cell types, batches mixed within each
    "random": (0.0, 0.0),  # positions independent of labels and batches
    "batch-separated": (0.0, 10.0),  # each batch its own blob
}


def labels_and_batches(adata):
    return adata.obs["cell_type"].astype(str).to_numpy(), adata.obs["batch"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def toys():
    return {name: toy_embedding(n_cells=1200, n_labels=5, n_batches=3, label_scale=labels, batch_scale=batches, seed=2)
            for name, (labels, batches) in TOYS.items()}


@pytest.fixture(scope="module")
def scores(toys):
    return {name: evaluate(adata, embedding="X_toy") for name, adata in toys.items()}


def test_every_metric_is_named_and_described(scores):
    for result in scores.values():
        assert list(result) == list(METRICS)
    assert {key for key, metric in METRICS.items() if metric.blog} == {
        "asw_isolated_label", "nmi_leiden_best", "ari_kmeans_best", "asw_batch", "kbet_per_label"}
    assert METRICS["asw_isolated_label"].blog == "ASW"  # the blog's "ASW" is the isolated-label variant


def test_perfect_embedding(scores):
    perfect = scores["perfect"]
    one = pytest.approx(1.0, abs=1e-12)
    assert perfect["nmi_leiden_best"] == one and perfect["ari_leiden_at_best_nmi"] == one
    assert perfect["ari_kmeans_best"] == one and perfect["kmeans_k_best"] == 5
    assert perfect["asw_label"] > 0.9 and perfect["asw_isolated_label"] > 0.9
    assert perfect["asw_batch"] > 0.9 and perfect["kbet_per_label"] > 0.85 and perfect["ilisi"] > 0.7
    assert perfect["graph_connectivity"] > 0.9


def test_random_embedding(scores):
    random = scores["random"]
    assert random["nmi_leiden_best"] < 0.05 and abs(random["ari_leiden_at_best_nmi"]) < 0.05
    assert abs(random["ari_kmeans_best"]) < 0.05
    assert abs(random["asw_label"] - 0.5) < 0.05  # silhouette ≈ 0, scaled to 0.5


def test_batch_separated_embedding(scores):
    separated = scores["batch-separated"]
    assert separated["asw_batch"] < 0.15 and separated["kbet_per_label"] < 0.2 and separated["ilisi"] < 0.1
    assert separated["asw_batch"] < scores["perfect"]["asw_batch"] - 0.7
    assert separated["kbet_per_label"] < scores["perfect"]["kbet_per_label"] - 0.7


def test_own_cluster_scores_are_sklearns(toys):
    adata = toys["perfect"].copy()
    labels, _ = labels_and_batches(adata)
    clusters = np.random.default_rng(0).integers(7, size=adata.n_obs)
    clusters[:600] = adata.obs["cell_type"].cat.codes.to_numpy()[:600]
    adata.obs["my_clusters"] = pd.Categorical(clusters)
    result = evaluate(adata, embedding="X_toy", cluster_key="my_clusters")
    assert result["nmi_own_clusters"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert result["ari_own_clusters"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-12)
    assert np.isnan(evaluate(adata, embedding="X_toy")["nmi_own_clusters"])  # no `gmvae_cluster` column: NaN


@pytest.fixture(scope="module")
def middling():
    "Overlapping cell types and a visible batch effect: no metric at its bound; type_00 in one batch only."
    adata = toy_embedding(n_cells=900, n_labels=3, n_batches=3, label_scale=1.5, batch_scale=0.8, seed=4)
    adata.obs.loc[adata.obs["cell_type"] == "type_00", "batch"] = "batch_00"
    return adata


@pytest.fixture(scope="module")
def two_runs(middling):
    "`evaluate` twice with the same seed, the first time with a `timings` dict."
    timings = {}
    return evaluate(middling, embedding="X_toy", seed=3, timings=timings), evaluate(middling, embedding="X_toy", seed=3), timings


def test_same_seed_same_numbers(two_runs):
    first, second, _ = two_runs
    assert first == second
    assert all(0 < first[key] < 1 for key in ("nmi_leiden_best", "ari_kmeans_best", "asw_batch", "kbet_per_label"))


def test_timings_name_every_step(two_runs):
    *_, timings = two_runs
    assert set(timings) == {"neighbors", "silhouettes", "leiden", "kmeans", "graph_connectivity", "asw_batch",
                            "kbet_per_label", "ilisi", "kbet_all_cells"}
    assert all(seconds >= 0 for seconds in timings.values())


def test_silhouettes_equal_scib(middling):
    coordinates, (labels, batches) = middling.obsm["X_toy"], labels_and_batches(middling)
    silhouettes = scaled_silhouettes(coordinates, labels)
    assert silhouettes.mean() == pytest.approx(scib_metrics.silhouette_label(coordinates, labels), abs=1e-6)
    assert isolated_label_asw(silhouettes, labels, batches) == pytest.approx(
        scib_metrics.isolated_labels(coordinates, labels, batches), abs=1e-6)


def test_batch_asw_equals_scib_silhouette_batch(middling):
    coordinates, (labels, batches) = middling.obsm["X_toy"], labels_and_batches(middling)
    ours = batch_asw(coordinates, labels, batches)
    assert list(ours.index) == ["type_01", "type_02"]  # type_00 is in a single batch: no batch silhouette, as in scib
    assert ours.mean() == pytest.approx(scib_metrics.silhouette_batch(coordinates, labels, batches), abs=1e-5)


def test_connectivities_equal_umaps(middling):
    neighbors = exact_neighbors(middling.obsm["X_toy"], 90)
    for k in (GRAPH_NEIGHBORS, KBET_NEIGHBORS, 90):
        ours, umaps = knn_connectivities(neighbors.subset_neighbors(k)), neighbors.subset_neighbors(k).knn_graph_connectivities
        assert ours.shape == umaps.shape and ours.nnz == umaps.nnz
        np.testing.assert_array_equal(ours.indices, umaps.tocsr().indices)
        np.testing.assert_allclose(ours.data, umaps.tocsr().data, rtol=1e-4, atol=1e-6)


def test_leiden_on_our_connectivities_equals_scib_at_a_resolution(middling):
    labels, _ = labels_and_batches(middling)
    graph = exact_neighbors(middling.obsm["X_toy"], GRAPH_NEIGHBORS)
    ours = leiden_scores(knn_connectivities(graph), labels, resolutions=[0.4, 1.0], seed=7)
    for resolution in (0.4, 1.0):
        scib = scib_metrics.nmi_ari_cluster_labels_leiden(graph, labels, optimize_resolution=False,
                                                          resolution=resolution, seed=7)
        assert ours.loc[resolution, ["nmi", "ari"]].tolist() == pytest.approx([scib["nmi"], scib["ari"]], abs=1e-12)


def test_ilisi_equals_scib(middling, toys):
    for adata in (middling, *toys.values()):
        _, batches = labels_and_batches(adata)
        neighbors = exact_neighbors(adata.obsm["X_toy"], 90)
        assert ilisi(neighbors, batches) == pytest.approx(scib_metrics.ilisi_knn(neighbors, batches), abs=1e-5)


def test_kbet_test_equals_scib_kbet(middling):
    _, batches = labels_and_batches(middling)
    neighbors = exact_neighbors(middling.obsm["X_toy"], 25)
    acceptance = kbet_acceptance(neighbors.indices, batches)
    assert 0.05 < acceptance < 0.95  # a middling case, where the test could go either way
    assert acceptance == scib_metrics.kbet(neighbors, batches)[0]


def test_kbet_per_label_equals_scib_with_exact_diffusion_neighbours(monkeypatch):
    """Our kBET follows scib_metrics.kbet_per_label step by step but searches the diffusion map's neighbours exactly.
    Given the same exact search, scib-metrics must give the same per-label scores. (Types of > 100 cells only: on
    smaller ones scib-metrics carries a lowered `diffusion_n_comps` over to later types, which we do not.)"""
    adata = toy_embedding(n_cells=1500, n_labels=3, n_batches=3, label_scale=1.0, batch_scale=0.5, seed=6)
    labels, batches = labels_and_batches(adata)
    sizes = pd.Series(labels).value_counts()
    assert sizes.min() > 100 and sizes.max() > 500 and sizes.min() <= 500  # both eigensolver paths
    neighbors = exact_neighbors(adata.obsm["X_toy"], KBET_NEIGHBORS)

    def exact_search(coordinates, n_neighbors, **kwargs):
        return exact_neighbors(coordinates, n_neighbors)

    monkeypatch.setattr(scib_metrics.nearest_neighbors, "pynndescent", exact_search)
    _, scib = scib_metrics.kbet_per_label(neighbors, batches, labels, return_df=True)  # on umap's connectivities
    ours = kbet_per_label(knn_connectivities(neighbors), batches, labels)
    assert ours.between(0.05, 0.95).all()
    expected = scib.set_index("cluster").loc[ours.index, "kBET"].to_numpy()
    np.testing.assert_allclose(ours.to_numpy(), expected, atol=0.005)  # a cell or two of slack for ARPACK; in practice equal


def test_kbet_skips_small_or_single_batch_types():
    adata = toy_embedding(n_cells=600, n_labels=3, n_batches=2, label_scale=8, seed=1)
    labels, batches = labels_and_batches(adata)
    batches[labels == "type_01"] = "batch_00"
    labels[:5] = "tiny"  # 5 cells: too few for kBET
    scores = kbet_per_label(knn_connectivities(exact_neighbors(adata.obsm["X_toy"], KBET_NEIGHBORS)), batches, labels)
    assert scores[["tiny", "type_01"]].isna().all() and scores[["type_00", "type_02"]].notna().all()


def test_errors_name_the_problem(toys):
    adata = toys["perfect"]
    with pytest.raises(KeyError, match=r"'X_gmvae' is not in adata.obsm, which holds \['X_toy'\]"):
        evaluate(adata)
    with pytest.raises(KeyError, match=r"label key 'celltype' is not a column of adata.obs, which has \['cell_type', 'batch'\]"):
        evaluate(adata, embedding="X_toy", label_key="celltype")
    with pytest.raises(KeyError, match="batch key 'donor' is not a column"):
        evaluate(adata, embedding="X_toy", batch_key="donor")
    broken = adata.copy()
    broken.obsm["X_toy"][10, 2] = np.nan
    broken.obsm["X_toy"][11, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 of 1,200 cells \(e.g. \['cell_10', 'cell_11'\]\)"):
        evaluate(broken, embedding="X_toy")
    with pytest.raises(ValueError, match=r"has 1 distinct label\(s\) \(\['type_02'\]\); the metrics compare at least 2"):
        evaluate(adata[adata.obs["cell_type"] == "type_02"], embedding="X_toy")
    with pytest.raises(ValueError, match="15 cells are too few to score: the metrics need at least 16"):
        evaluate(adata[:15], embedding="X_toy")
    unlabelled = adata.copy()
    unlabelled.obs["cell_type"] = unlabelled.obs["cell_type"].where(np.arange(adata.n_obs) >= 3)
    with pytest.raises(ValueError, match=r"adata.obs\['cell_type'\] \(label\) is missing for 3 of 1,200 cells"):
        evaluate(unlabelled, embedding="X_toy")
    with pytest.raises(ValueError, match=r"must be cells × dims"):
        evaluate(ad_with_embedding(adata, np.zeros((adata.n_obs, 0), np.float32)), embedding="X_bad")


def test_without_labels_only_the_label_free_metrics_are_reported(toys, scores):
    label_free = [key for key, metric in METRICS.items() if not metric.needs_labels]
    for name, adata in toys.items():
        unlabelled = evaluate(adata.copy(), embedding="X_toy", label_key=None)
        assert list(unlabelled) == label_free  # the others are left out, not NaN
        assert unlabelled == {key: scores[name][key] for key in label_free}
    assert scores["perfect"]["kbet_all_cells"] > 0.85 and scores["batch-separated"]["kbet_all_cells"] < 0.05
    no_labels_at_all = toys["perfect"].copy()
    del no_labels_at_all.obs["cell_type"]
    assert set(evaluate(no_labels_at_all, embedding="X_toy", label_key=None)) == set(label_free)


def test_fewer_cells_than_neighbours_use_one_neighbour_less_than_the_cells(toys):
    few = toys["perfect"][:40].copy()  # the test split of a 400-cell data set
    result = evaluate(few, embedding="X_toy")
    assert result["n_neighbors"] == 39 and 0 < result["ilisi"] <= 1 and 0 <= result["kbet_all_cells"] <= 1
    assert evaluate(toys["perfect"][:MIN_CELLS].copy(), embedding="X_toy", label_key=None)["n_neighbors"] == MIN_CELLS - 1


def ad_with_embedding(adata, coordinates):
    adata = adata.copy()
    adata.obsm["X_bad"] = coordinates
    return adata


def test_one_batch_gives_nan_batch_metrics_with_a_warning(toys):
    adata = toys["perfect"].copy()
    adata.obs["batch"] = "only"
    with pytest.warns(UserWarning, match="batch metrics need at least 2 batches, got 1"):
        result = evaluate(adata, embedding="X_toy")
    assert all(np.isnan(result[key]) for key in ("asw_batch", "kbet_per_label", "ilisi"))
    assert result["nmi_leiden_best"] == pytest.approx(1.0, abs=1e-12) and result["graph_connectivity"] > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no batch column is one sample: nothing to warn about, the batch keys left out
        one_sample = evaluate(adata, embedding="X_toy", batch_key=None)
    assert not {"asw_batch", "kbet_per_label", "kbet_all_cells", "ilisi"} & set(one_sample)
    assert one_sample["nmi_leiden_best"] == result["nmi_leiden_best"] and one_sample["graph_connectivity"] == result["graph_connectivity"]
