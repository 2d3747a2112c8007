"""New cells to score (``task=predict``): a folder of image files, or a CSV naming them, as an unlabelled
manifest whose ``ids`` are the paths the output repeats."""

from __future__ import annotations

from pathlib import Path

from leukemia.data.manifest import (
    IMAGE_SUFFIXES,
    Manifest,
    is_image_file,
    listed_files,
    read_csv_columns,
)
from leukemia.errors import UserError


def folder_cells(folder: Path) -> Manifest:
    """Every image file under ``folder``, recursively, in sorted order of their paths relative to it."""
    found = sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*") if is_image_file(path))
    if not found:
        raise UserError(f"predict.input={folder}: no image files ({' '.join(IMAGE_SUFFIXES)}) under this folder; "
                        f"point it at the cells' folder or at a CSV with a 'path' column")  # fmt: skip
    return Manifest("predict", [path for _, path in found], None, source=str(folder), ids=[name for name, _ in found])


def csv_cells(csv_path: Path) -> Manifest:
    """The files a CSV's ``path`` column names (relative to the CSV's folder), in its order, with its
    ``subject`` column if it has one."""
    table = read_csv_columns(csv_path, ["path"], "predict")
    paths = listed_files(table, "path", csv_path)
    names = [str(name).strip() for name in table["path"]]
    subjects = [str(subject) for subject in table["subject"]] if "subject" in table.columns else None
    return Manifest("predict", paths, None, subjects, source=str(csv_path), ids=names)


def read_new_cells(source: str) -> Manifest:
    """``predict.input``: a folder, or a ``.csv`` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return folder_cells(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return csv_cells(path)
    what = "is not a folder or a .csv file" if path.exists() else "does not exist"
    raise UserError(f"predict.input={source}: {what}; give a folder of cell images or a CSV with a 'path' column")
