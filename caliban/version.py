"""The version of caliban (async), in one place."""

__version__ = "0.5.0.dev0"
