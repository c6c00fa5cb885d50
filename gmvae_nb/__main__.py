"`python -m gmvae_nb`: the `gmvae-nb` command line (written by hand, like `__init__.py`; see nbs/12_cli.ipynb)."
from gmvae_nb.cli import main

if __name__ == "__main__": main()
