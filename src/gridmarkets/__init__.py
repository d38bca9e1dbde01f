"""gridmarkets: optimization models for distribution-level electricity markets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridmarkets")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
