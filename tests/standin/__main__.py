"""`python -m tests.standin DIR`: write the stand-in artifact mirror (see the package docstring)."""

import sys
from pathlib import Path

from tests.standin import make_mirror

print(make_mirror(Path(sys.argv[1] if len(sys.argv) > 1 else "standin-mirror")))
