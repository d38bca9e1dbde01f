"""gridmarkets: optimization models for distribution-level electricity markets."""

import os
import sys

# ``python -m gridmarkets`` puts the working directory first on the import path, so a
# module planted there (``csv.py``, ``concurrent.py``) would shadow the one we import:
# take it off before importing anything else (a script's own folder is left alone).
if sys.argv[:1] == ["-m"] and sys.path[:1] == [os.getcwd()]:
    del sys.path[0]

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridmarkets")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
