"""Keelson: the controller-side Python package (CLI and lab driver)."""

__version__ = "0.1.0"
