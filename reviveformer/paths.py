"""Output paths checked before anything is written: a file where a folder must go is bad input (exit 2, the path
and what is in the way named), not a FileExistsError traceback after half the outputs are written."""

from __future__ import annotations

from pathlib import Path

from reviveformer.errors import UserError


def _in_the_way(folder: Path) -> Path | None:
    """The first part of `folder` (itself, or a parent) that exists and is not a folder; None if none is."""
    for part in [folder, *folder.parents]:
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


def check_out_dir(folder: str | Path, flag: str = "--out") -> Path:
    """`folder` as a Path, once sure it is, or can be made, a folder; else a UserError naming the file in the
    way. Call it before computing or writing anything."""
    path = Path(folder)
    blocker = _in_the_way(path)
    if blocker is not None:
        what = "is a file" if blocker.is_file() else "exists and is not a folder"
        where = "" if blocker == path else f", so folder {path} cannot be made under it"
        raise UserError(f"{flag} {path}: {blocker} {what}{where}; give a folder path (new or existing)")
    return path


def check_out_file(file: str | Path, flag: str = "--out") -> Path:
    """`file` as a Path, once sure its folder exists and it is not itself a folder."""
    path = Path(file)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file path, e.g. {path / 'report.html'}")
    blocker = _in_the_way(path.parent)
    if blocker is not None:
        raise UserError(
            f"{flag} {path}: {blocker} is a file, not a folder, so nothing can be written under it; "
            "give a file in an existing folder"
        )
    if not path.parent.is_dir():
        raise UserError(
            f"{flag} {path}: folder {path.parent} does not exist; give a file in an existing folder"
        )
    return path
