"""New cells to score (``task=predict``): a folder of image files, or a CSV naming them, as an unlabelled
manifest whose ``ids`` are the paths the output repeats, read by the same readers as the training layouts."""

from __future__ import annotations

from pathlib import Path

from leukemia.data.manifest import (
    IMAGE_SUFFIXES,
    Manifest,
    check_manifest,
    image_files_in,
    listed_files,
    read_csv_columns,
    subject_column,
)
from leukemia.errors import UserError


def folder_cells(folder: Path) -> Manifest:
    """Every image file under ``folder``, recursively (hidden files and folders left out), in sorted order of
    their paths relative to it."""
    found = image_files_in(folder, recursive=True)
    if not found:
        raise UserError(f"predict.input={folder}: no image files ({' '.join(IMAGE_SUFFIXES)}) under this folder; "
                        f"point it at the cells' folder or at a CSV with a 'path' column")  # fmt: skip
    names = [path.relative_to(folder).as_posix() for path in found]
    return Manifest("predict", found, None, source=str(folder), ids=names)


def csv_cells(csv_path: Path) -> Manifest:
    """The files a CSV's ``path`` column names (relative to the CSV's folder), in its order, each once, with its
    ``subject`` column if it has one (a blank cell: a cell whose subject is unknown)."""
    table = read_csv_columns(csv_path, ["path"], "predict")
    paths = listed_files(table, "path", csv_path)
    subjects = subject_column(table, str(csv_path), unknown_allowed=True)
    return Manifest("predict", paths, None, subjects, source=str(csv_path), ids=table["path"].tolist())


def read_new_cells(source: str) -> Manifest:
    """``predict.input``: a folder, or a ``.csv`` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        cells = folder_cells(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        cells = csv_cells(path)
    else:
        what = "is not a folder or a .csv file" if path.exists() else "does not exist"
        raise UserError(f"predict.input={source}: {what}; give a folder of cell images or a CSV with a 'path' column")
    check_manifest(cells)  # each file once: a file scored twice would count twice in its subject's diagnosis
    return cells
