"""The benchmark scripts' own command-line handling (their measurements live in benchmarks/RESULTS.md, not in tests)."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", QUALITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _rows(path, seed, fit_settings=""):
    pd.DataFrame(dict(dataset=["multiome"], method=["gmvae"], seed=[seed], fit_settings=[fit_settings],
                      model_settings=[""])).to_csv(path, index=False)
    return str(path)


def test_summarise_refuses_a_run_given_twice_or_measured_two_ways(quality, tmp_path):
    first, again = _rows(tmp_path / "a.csv", 0), _rows(tmp_path / "b.csv", 0)
    with pytest.raises(ValueError, match="multiome gmvae seed 0"): quality.read_rows([first, again])
    other = _rows(tmp_path / "c.csv", 1, fit_settings="lr=0.002")
    with pytest.raises(ValueError, match="different --fit/--model settings would be summarised together: multiome gmvae"):
        quality.read_rows([first, other])
    assert len(quality.read_rows([first, _rows(tmp_path / "d.csv", 1)])) == 2
