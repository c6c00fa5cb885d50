"Shared fixtures of the pytest suites."
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    "The repository root."
    return REPO


@pytest.fixture(scope="session")
def epochs_of():
    "The epochs a model's history holds after `fit(max_epochs=n)` without early stopping: n, and the pretraining of the kept restart if its mixture was fitted to x (`init_mixture`)."
    def epochs(model, max_epochs: int) -> int:
        config = model.train_config
        return max_epochs + (config["init_epochs"] if config["init_mixture"] == "gmm" else 0)
    return epochs


@pytest.fixture(scope="session")
def shared_data() -> Path:
    "The folder of real starter files beside the repository (`../shared/data`)."
    assert SHARED_DATA.is_dir(), f"real starter files expected in {SHARED_DATA}"
    return SHARED_DATA
