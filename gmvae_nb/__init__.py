"""GMVAE clustering of single-cell RNA-seq counts with batch correction.

`gmvae_nb.GMVAE` is the model (see `gmvae_nb.model`); it is imported on first use so that
`import gmvae_nb` and the command line start without loading torch."""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "GMVAE":
        from gmvae_nb.model import GMVAE
        return GMVAE
    raise AttributeError(f"module 'gmvae_nb' has no attribute {name!r}")
