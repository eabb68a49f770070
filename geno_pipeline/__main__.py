"""`python -m geno_pipeline` runs the CLI."""

from geno_pipeline.cli import entrypoint

entrypoint()
