"""The package version, in the base layer so that any module may record it without importing the package root."""

__version__ = "0.1.0"
