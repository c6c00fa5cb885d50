"""Train a small GMVAE on a simulated data set, alone or as one of the processes of `torchrun`; rank 0 writes
the weights and the held-out ELBO to OUT. Driven by tests/test_distributed.py.

    python tests/distributed_fit.py OUT [--no-sync]
    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_fit.py OUT [--no-sync]

--no-sync replaces DistributedDataParallel by a wrapper that does not average the gradients, so that each
process trains on its own pieces only: the failure the test must detect.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

import gmvae_nb.distributed
from gmvae_nb.data import split
from gmvae_nb.distributed import process_rank
from gmvae_nb.model import GMVAE
from gmvae_nb.simulate import simulate

EPOCHS, N_SAMPLES, HELD_OUT_SAMPLES = 4, 2, 10
INIT_EPOCHS = 2  # before the third restart's mixture is fitted to x: 60 would grow float32's rounding past the test's tolerance
CHOOSE_AFTER = 2  # the restarts are compared after 2 epochs and the kept one resumes from its checkpoint: rank 0's, under torchrun
ARCHITECTURE = dict(n_clusters=4, n_x=10, n_w=5, encoder_hidden=(64,), decoder_hidden=(64,), beta_hidden=(32,),
                    dropout=0.0)  # no dropout: its masks are the one stream that differs between 1 and 2 processes


class Unsynced(torch.nn.Module):
    "Stands in for DistributedDataParallel without averaging the gradients."
    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs): return self.module(*args, **kwargs)


def main(out: Path, no_sync: bool):
    torch.set_num_threads(1)
    if no_sync: gmvae_nb.distributed.DistributedDataParallel = Unsynced
    adata = split(simulate("default", n_cells=1000, n_genes=100, n_types=4, n_batches=2, seed=0), seed=0)
    model = GMVAE(adata, seed=0, **ARCHITECTURE).fit(max_epochs=EPOCHS, n_samples=N_SAMPLES, batch_size=64,
                                                     init_epochs=INIT_EPOCHS, choose_after=CHOOSE_AFTER, device="cpu",
                                                     progress=False)
    if process_rank() != 0: return
    held_out = adata[adata.obs["split"] == "test"].copy()
    neg_elbo = float(model.elbo_terms(held_out, n_samples=HELD_OUT_SAMPLES).sum(axis=1).mean())
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.module.state_dict(), out / "weights.pt")
    (out / "result.json").write_text(json.dumps(dict(neg_elbo=neg_elbo, history=model.history.drop(columns="seconds").to_dict("list"))))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--no-sync" in sys.argv[2:])
