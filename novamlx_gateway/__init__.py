"""The NovaMLX gateway: HTTP APIs, the worker supervisor, middleware."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("novamlx")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
