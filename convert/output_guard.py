"""Never write the output over the model being read.

`-o` naming the source itself (the same path, another path to it, a symlink or a
hard link) or one of the files of a source folder would destroy the source once the
new file is renamed into place; `--force` does not change that. Files are compared by
(st_dev, st_ino), which sees through every kind of alias.
"""
from __future__ import annotations

import os
from pathlib import Path

from edgeslim.errors import InputError


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to the source is the source
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_source_overwrite(src: str, out: str | os.PathLike) -> None:
    """InputError when writing `out` would replace `src` or a file of the `src` folder."""
    out_id = _ident(Path(out))
    if out_id is None:
        return
    source = Path(src)
    if source.is_file() and _ident(source) == out_id:
        raise InputError(f"-o {out} is the source model {src} itself; converting would destroy it, even with "
                         "--force; choose another output file")
    if source.is_dir():
        for f in source.iterdir():  # the converter reads only top-level files of a folder
            if f.is_file() and _ident(f) == out_id:
                raise InputError(f"-o {out} is {f.name} of the source folder {src}; converting would destroy it, "
                                 "even with --force; choose another output file")
