"""The benchmark scripts' own command-line handling (their measurements live in benchmarks/RESULTS.md, not in tests)."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality(): return _script("quality")


@pytest.fixture(scope="module")
def mixture_optima(): return _script("mixture_optima")


@pytest.mark.parametrize("text, value", [("0.002", 0.002), ("True", True), ("None", None), ("(64, 32)", (64, 32)),
                                         ('"gmm"', "gmm"), ("gmm", "gmm"), ("1e-3", 1e-3)])
def test_setting_values_are_literals_or_plain_words(quality, text, value):
    # --fit init_mixture=gmm is the string "gmm", as --fit init_mixture='"gmm"' is; numbers and True/None stay literals
    name, parsed = quality.parse_setting(f"setting={text}")
    assert name == "setting" and parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("item, message", [("lr", "a setting is NAME=VALUE"), ("=0.002", "a setting is NAME=VALUE"),
                                           ("lr=0.0o2", "the value of lr is neither a Python literal nor a plain word: '0.0o2'"),
                                           ("init_mixture=g m m", "the value of init_mixture is neither")])
def test_a_malformed_setting_is_named(quality, item, message):
    # a typo must not reach fit as a string (TrainConfig would then fail comparing a str with a number)
    with pytest.raises(ValueError, match=message): quality.parse_setting(item)


@pytest.mark.parametrize("items, expected", [([], {}), (["cite=10", "multiome=7"], {"cite": 10, "multiome": 7})])
def test_n_clusters_per_data_set(quality, items, expected):
    assert quality.parse_n_clusters(items) == expected


@pytest.mark.parametrize("item, message", [("cite", "--n-clusters takes DATASET=K with DATASET one of multiome, cite"),
                                           ("pbmc=10", "got 'pbmc=10'"), ("cite=0", "the K of cite must be a whole number of at least 1, got '0'"),
                                           ("cite=ten", "got 'ten'")])
def test_a_malformed_n_clusters_is_named(quality, item, message):
    with pytest.raises(ValueError, match=message): quality.parse_n_clusters([item])


def _rows(path, seed, fit_settings="", n_clusters=21):
    pd.DataFrame(dict(dataset=["multiome"], method=["gmvae"], seed=[seed], n_clusters=[n_clusters], fit_settings=[fit_settings],
                      model_settings=[""])).to_csv(path, index=False)
    return str(path)


def test_summarise_refuses_a_run_given_twice_or_measured_two_ways(quality, tmp_path):
    first, again = _rows(tmp_path / "a.csv", 0), _rows(tmp_path / "b.csv", 0)
    with pytest.raises(ValueError, match="multiome gmvae seed 0"): quality.read_rows([first, again])
    other = _rows(tmp_path / "c.csv", 1, fit_settings="lr=0.002")
    with pytest.raises(ValueError, match="different --fit/--model settings or K would be summarised together: multiome gmvae"):
        quality.read_rows([first, other])
    with pytest.raises(ValueError, match="or K would be summarised together: multiome gmvae"):
        quality.read_rows([first, _rows(tmp_path / "e.csv", 1, n_clusters=7)])
    assert len(quality.read_rows([first, _rows(tmp_path / "d.csv", 1)])) == 2


def _blobs(centres, n=150, seed=0):
    "n points of an isotropic unit Gaussian around each centre, and each point's blob."
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, len(c))) + c for c in np.asarray(centres, dtype=float)])
    return x, np.repeat(np.arange(len(centres)), n)


def test_label_gaussians_are_the_groups_moments(mixture_optima):
    x, blob = _blobs([[0, 0], [8, 0], [0, 8]])
    codes = np.where(np.arange(len(x)) == 0, 3, blob)  # one cell alone in group 3: it takes the pooled moments
    floor = mixture_optima.FLOOR * x.var(0).mean()  # of the pooled variances
    means, variances, shares = mixture_optima.label_gaussians(x, codes, 4)
    _, covariances, _ = mixture_optima.label_gaussians(x, codes, 4, "full")
    for g, cells in enumerate([x[codes == g] for g in range(3)] + [x]):
        if g < 3: np.testing.assert_allclose(means[g], cells.mean(0))
        np.testing.assert_allclose(variances[g], cells.var(0) + floor)
        np.testing.assert_allclose(covariances[g], np.cov(cells.T, ddof=0) + floor * np.eye(2))
    np.testing.assert_allclose(shares, np.bincount(codes) / len(x))


def test_label_densities_are_scipys(mixture_optima):
    from scipy.stats import multivariate_normal, norm
    x, blob = _blobs([[0, 0], [8, 0], [0, 8]])
    for covariance in mixture_optima.COVARIANCES:
        means, covariances, shares = mixture_optima.label_gaussians(x, blob, 3, covariance)
        expected = np.stack([np.log(share) + (norm(mean, np.sqrt(cov)).logpdf(x).sum(1) if covariance == "diag"
                                              else multivariate_normal(mean, cov).logpdf(x))
                             for mean, cov, share in zip(means, covariances, shares)], 1)
        np.testing.assert_allclose(mixture_optima.log_densities(x, means, covariances, shares), expected, rtol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_separate_groups_are_the_mixtures_best_optimum(mixture_optima, covariance):
    x, blob = _blobs([[0, 0, 0], [10, 0, 0], [0, 10, 0]])
    found = mixture_optima.optima(x, np.array(["a", "b", "c"])[blob], starts=3, covariance=covariance, own=2 - blob)
    assert found["label_classes"] == found["labels_em"] == found["kmeans_em"] == found["own_em"] == 1.0
    assert abs(found["own_em_loglik"] - found["labels_em_loglik"]) < mixture_optima.TIE
    assert found["beat_labels"] == 0 and abs(found["kmeans_em_best_loglik"] - found["labels_em_loglik"]) < mixture_optima.TIE


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_labels_that_merge_two_groups_and_split_one_are_a_lower_optimum(mixture_optima, covariance):
    # labels: blobs 0 and 1 as one type, blob 2 cut in two along its first axis. EM cannot leave that partition, and
    # every k-means start ends at the three blobs, a higher likelihood
    x, blob = _blobs([[0, 0, 0], [10, 0, 0], [0, 10, 0]])
    labels = np.where(blob < 2, "merged", np.where(x[:, 0] < 0, "left", "right"))
    found = mixture_optima.optima(x, labels, starts=3, covariance=covariance, own=blob)  # own clusters: the blobs
    assert found["beat_labels"] == found["starts"] == 3
    assert found["own_em_loglik"] > found["labels_em_loglik"] + 0.1 and found["own_em"] == found["kmeans_em"]
    assert found["kmeans_em_best_loglik"] > found["labels_em_loglik"] + 0.1
    assert found["labels_em"] > 0.9 > found["kmeans_em"]


def test_an_unknown_covariance_is_named(mixture_optima):
    x, blob = _blobs([[0, 0], [8, 0]])
    with pytest.raises(ValueError, match=r"covariance must be one of \('diag', 'full'\), got 'spherical'"):
        mixture_optima.optima(x, blob, covariance="spherical")
