"""The package version (the code version run ids and checkpoint bindings name)."""

__version__ = "0.1.0"
