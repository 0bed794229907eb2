"""The repository root, put on sys.path so that the benchmarks import the test support code.

`python bench/NAME.py` puts bench/ on sys.path, not the repository root, and `tests/support/`
(fleets, builds, the CLI helper) is not part of the installed package. Every benchmark imports
this module before any `tests.support` import; isort's ordering keeps it there (it is a
"third-party" module to ruff, and `tests` is first-party).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
