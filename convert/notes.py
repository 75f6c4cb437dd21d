"""What the converter tells the user on stderr: one-line notes (`edgeslim: note: ...`) and progress bars."""
from __future__ import annotations

import sys

_LONG = 200_000_000  # weights: above this a progress bar is shown even without a TTY


def note(message: str) -> None:
    """Tell the user something they may want to act on, without stopping."""
    print(f"edgeslim: note: {message}", file=sys.stderr)


def progress_bar(total: int, progress: bool | None, desc: str = "convert"):
    """A tqdm bar over `total` weights, or None: progress True/False forces it, None shows it on a TTY
    or for models above _LONG weights; a callable gets the updates instead (convert/progress.py)."""
    if callable(progress):
        from .progress import CallbackBar

        return CallbackBar(total, progress, desc)
    show = progress if progress is not None else (sys.stderr.isatty() or total > _LONG)
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="w", unit_scale=True, desc=desc, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)
