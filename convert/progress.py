"""Progress reports to a caller's function instead of a terminal bar (`edgeslim.convert(..., progress=fn)`).

    def fn(done: int, total: int, stage: str, tensor: str) -> None: ...

`stage` is "analyze" (measuring each matrix, budget conversions) or "convert" (quantizing and
writing); done/total count weights within the stage; `tensor` is the tensor being
processed. Raising from fn aborts the conversion; no output file is left behind.
"""
from __future__ import annotations

from typing import Callable


class CallbackBar:
    """The slice of tqdm's interface the converter uses (update, set_postfix_str, close), calling fn."""

    def __init__(self, total: int, fn: Callable[[int, int, str, str], object], desc: str):
        self.total, self.n, self.fn, self.desc, self.name = int(total), 0, fn, desc, ""
        fn(0, self.total, desc, "")

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        self.fn(self.n, self.total, self.desc, self.name)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.name = s

    def close(self) -> None:
        pass
