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
def shared_data() -> Path:
    "The folder of real starter files beside the repository (`../shared/data`)."
    assert SHARED_DATA.is_dir(), f"real starter files expected in {SHARED_DATA}"
    return SHARED_DATA
