"""One-line notes to stderr (fallbacks, guesses): `edgeslim: note: ...`."""
from __future__ import annotations

import sys


def note(message: str) -> None:
    """Tell the user something they may want to act on, without stopping."""
    print(f"edgeslim: note: {message}", file=sys.stderr)
