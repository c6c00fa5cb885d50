"""Out-of-core training: a `GMVAE` built on an AnnData opened backed (`read_h5ad(path, backed="r")`) streams its
minibatches from the file in a background thread, and gives the run that the same data in memory gives."""
import shutil
import threading
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import gmvae_nb.train
from gmvae_nb import GMVAE
from gmvae_nb.data import split, write_h5ad
from gmvae_nb.simulate import simulate
from gmvae_nb.loaders import LOADER_THREAD, DiskRows, on_disk

ARCHITECTURE = dict(n_clusters=3, n_x=8, n_w=4, encoder_hidden=(64, 32), decoder_hidden=(32, 64), beta_hidden=(32,))
TRAINING = dict(max_epochs=2, n_samples=2, batch_size=64, device="cpu", progress=False,
                n_jobs=1)  # backed, the restarts train one by one; so do those of the in-memory run compared with it


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOADER_THREAD]


@pytest.fixture(scope="module")
def h5ad_path(tmp_path_factory):
    "A simulated data set with a train/validation/test split, counts in X (and layers['counts']), written to h5ad."
    adata = split(simulate("default", n_cells=600, n_genes=120, n_types=3, n_batches=2, seed=0), seed=0)
    return write_h5ad(adata, tmp_path_factory.mktemp("backed") / "data.h5ad")


def fitted(adata: ad.AnnData) -> GMVAE:
    return GMVAE(adata, layer=None, seed=3, **ARCHITECTURE).fit(**TRAINING)


def test_backed_run_equals_in_memory_run(h5ad_path):
    memory = fitted(ad.read_h5ad(h5ad_path))
    backed = ad.read_h5ad(h5ad_path, backed="r")
    disk = fitted(backed)
    assert on_disk(disk._aligned_counts(backed))
    assert loader_threads() == []
    pd.testing.assert_frame_equal(disk.history.drop(columns="seconds"), memory.history.drop(columns="seconds"),
                                  check_exact=True)
    assert "validation_neg_elbo" in disk.history
    for name, value in memory.module.state_dict().items():
        assert torch.equal(disk.module.state_dict()[name], value), name
    np.testing.assert_array_equal(disk.get_latent(), memory.get_latent())
    np.testing.assert_array_equal(disk.predict_proba(), memory.predict_proba())
    np.testing.assert_array_equal(backed.obsm["X_gmvae"], memory.adata.obsm["X_gmvae"])
    assert loader_threads() == []


def test_backed_restarts_train_one_by_one(h5ad_path):
    "Worker processes would each need the counts in memory: backed, `n_jobs=\"auto\"` trains the restarts here, and more processes asked for are refused."
    model = GMVAE(ad.read_h5ad(h5ad_path, backed="r"), layer=None, seed=0, **ARCHITECTURE)
    with pytest.raises(ValueError, match=r"n_jobs=2 trains the restarts in other processes, but the counts are read from disk \(backed mode\): pass n_jobs=1"):
        model.fit(**TRAINING | dict(n_jobs=2))
    assert len(model.history) == 0  # refused before any training
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # threads for two processes: in memory, "auto" would train the restarts in two
    try: model.fit(**TRAINING | dict(n_jobs="auto"))
    finally: torch.set_num_threads(threads)
    assert (model.train_config["n_init"], model.train_config["n_jobs"], model.train_config["restart_threads"]) == (3, 1, 2)


def test_loader_thread_runs_during_a_pass_and_ends_with_it(h5ad_path):
    model = GMVAE(ad.read_h5ad(h5ad_path, backed="r"), layer=None, seed=0, **ARCHITECTURE)
    _, loader = model._loader(None, batch_size=100)
    running = [len(loader_threads()) for _ in loader]
    assert running[0] == 1 and len(running) == 6
    assert loader_threads() == []


def test_thread_ends_when_training_fails_mid_epoch(h5ad_path, monkeypatch):
    model = GMVAE(ad.read_h5ad(h5ad_path, backed="r"), layer=None, seed=0, **ARCHITECTURE)
    terms, steps = gmvae_nb.train.minibatch_terms, []

    def failing_terms(*args, **kwargs):
        steps.append(len(loader_threads()))
        if len(steps) == 3: raise RuntimeError("the step failed")
        return terms(*args, **kwargs)

    monkeypatch.setattr(gmvae_nb.train, "minibatch_terms", failing_terms)
    with pytest.raises(RuntimeError, match="the step failed"):
        model.fit(**TRAINING)
    assert steps == [1, 1, 1]
    assert loader_threads() == []


def test_read_error_reaches_training_with_the_file_named(h5ad_path, monkeypatch):
    model = GMVAE(ad.read_h5ad(h5ad_path, backed="r"), layer=None, seed=0, **ARCHITECTURE)
    read, reads = DiskRows.__getitem__, []

    def failing_read(self, rows):
        reads.append(len(rows))
        if len(reads) == 3: raise OSError("Can't read data (file truncated)")
        return read(self, rows)

    monkeypatch.setattr(DiskRows, "__getitem__", failing_read)
    with pytest.raises(OSError, match="file truncated") as failure:
        model.fit(**TRAINING)
    (note,) = failure.value.__notes__
    assert note.startswith("raised in the background loader while it read rows [")
    assert f"(64 in all) from DiskRows('{h5ad_path}' /X, 600 × 120)" in note
    assert loader_threads() == []


def test_a_layer_of_a_backed_anndata_is_in_memory_and_says_so(h5ad_path):
    backed = ad.read_h5ad(h5ad_path, backed="r")
    with pytest.warns(UserWarning, match="only X stays on disk. To train from disk, keep the counts in X and pass layer=None"):
        model = GMVAE(backed, layer="counts", seed=0, **ARCHITECTURE)
        assert not on_disk(model._aligned_counts(backed))


def test_counts_moved_from_a_layer_to_x_stream_from_disk(h5ad_path, tmp_path):
    "The README's recipe: move layers['counts'] over X with h5py, without reading it; then nothing is in memory."
    moved = shutil.copy(h5ad_path, tmp_path / "moved.h5ad")
    with h5py.File(moved, "r+") as f:
        del f["X"]
        f.move("layers/counts", "X")
    backed = ad.read_h5ad(moved, backed="r")
    assert len(backed.layers) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = GMVAE(backed, layer=None, seed=0, **ARCHITECTURE)
    assert on_disk(model._aligned_counts(backed))
    np.testing.assert_array_equal(model.get_latent(), GMVAE(ad.read_h5ad(h5ad_path), layer="counts", seed=0,
                                                            **ARCHITECTURE).get_latent())
