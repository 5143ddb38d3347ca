"""raydigits: a Ray Tune hyperparameter search for torchvision image classifiers."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# `python -m raydigits.<entry>` (sys.argv[0] is "-m" while Python finds the module) or the installed
# `raydigits` command: a Ctrl-C while their modules import is one line and exit 130 (errors.py). Not
# when raydigits is imported as a library (a Ray worker, a test, a user's script).
if _sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] if _sys.argv else "") == "raydigits":
    from .errors import interrupt_exits_while_importing

    interrupt_exits_while_importing()
