"""The decode cache is derived data: a damaged, truncated or foreign file is named once and rebuilt; a full disk
ends the build in one line with nothing left behind; a file replaced by another of the same size and
modification time is decoded again."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukemia.data.cache import decoded_split
from leukemia.data.layouts.lab import read_lab_csv

from conftest import write_lab_layout


@pytest.fixture
def manifest(tmp_path):
    root = write_lab_layout(tmp_path / "lab", {"train": 10}, size=48)
    return read_lab_csv(root / "train.csv", "train", labelled=True)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10:40] = b"{'descr': '|u1', 'shape': (((("
    path.write_bytes(bytes(data))


def foreign(path: Path) -> None:
    np.save(path, np.zeros((3, 3, 32, 32), dtype=np.uint8))  # another split's array under this key's name


def other_dtype(path: Path) -> None:
    pixels = np.load(path)
    np.save(path, pixels.astype(np.float32)[..., :8])  # the same number of bytes, another array


def same_shape_foreign(path: Path) -> None:
    other = path.parent.parent / "other.npy"  # outside the cache folder
    np.save(other, 255 - np.load(path))  # another picture of the same shape and dtype
    shutil.copyfile(other, path)  # written over it in place, its metadata left as it was


def garble_metadata(path: Path) -> None:
    path.with_suffix(".json").write_text("{not json")


def drop_metadata(path: Path) -> None:
    path.with_suffix(".json").unlink()


def metadata_of_another_key(path: Path) -> None:
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(meta | {"key": "0" * 24}))


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE = [truncate, garble_header, foreign, other_dtype, same_shape_foreign, garble_metadata, drop_metadata,
          metadata_of_another_key, empty]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE, ids=[damage.__name__ for damage in DAMAGE])
def test_a_damaged_cache_file_is_named_in_one_warning_and_rebuilt(manifest, tmp_path, caplog, damage):
    first = decoded_split(manifest, 40, 32, tmp_path / "cache")
    expected = np.array(first.pixels)
    del first
    damage(tmp_path / "cache" / next(p.name for p in (tmp_path / "cache").glob("*.npy")))
    with caplog.at_level(logging.WARNING):
        again = decoded_split(manifest, 40, 32, tmp_path / "cache")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(again.path) in warnings[0].getMessage()
    assert "a damaged decode cache" in warnings[0].getMessage() and "decoding the train split again" in caplog.text
    assert np.array_equal(np.array(again.pixels), expected)
    caplog.clear()
    decoded_split(manifest, 40, 32, tmp_path / "cache")  # whole again: read, not rebuilt
    assert caplog.text == ""
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_file_replaced_with_the_same_size_and_modification_time_is_decoded_again(manifest, tmp_path):
    first = decoded_split(manifest, 40, 32, tmp_path / "cache")
    old = np.array(first.pixels)
    for row in range(3):  # another picture of the same size, its modification time set back (as cp -p leaves it)
        path = manifest.paths[row]
        status = path.stat()
        replacement = Image.open(manifest.paths[row + 5]).convert("RGB")
        replacement.save(path)
        assert path.stat().st_size == status.st_size
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    second = decoded_split(manifest, 40, 32, tmp_path / "cache")
    assert second.path != first.path
    for row in range(3):
        assert np.array_equal(second.pixels[row], old[row + 5])
    assert np.array_equal(second.pixels[4], old[4])


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system (tmpfs), mounted for the test: where the mount is not permitted, skipped."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # even if something still holds a file there


FILL_THE_DISK = """
import sys
from pathlib import Path
from leukemia.data.cache import decoded_split
from leukemia.data.layouts.lab import read_lab_csv
from leukemia.errors import UserError
manifest = read_lab_csv(Path(sys.argv[1]), "train", labelled=True)
try:
    decoded_split(manifest, None, 96, Path(sys.argv[2]))
except UserError as error:
    print(error)
"""


def test_a_full_disk_ends_the_build_in_one_line_with_nothing_left_behind(tmp_path, small_disk):
    """In a process of its own: writing a memory-mapped file on a full disk would kill it with SIGBUS."""
    root = write_lab_layout(tmp_path / "big", {"train": 40}, size=48)  # 40 x 3 x 96 x 96: about 1.1 MB
    built = subprocess.run([sys.executable, "-c", FILL_THE_DISK, str(root / "train.csv"), str(small_disk / "decoded")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, f"exit {built.returncode}: {built.stderr[-2000:]}"
    message = built.stdout.strip()
    assert message.startswith(f"{small_disk / 'decoded'}: no room for the decode cache of the train split (1 MB")
    assert "paths.cache_dir" in message and "data.cache=none" in message and "\n" not in message
    assert sorted(path.suffix for path in (small_disk / "decoded").iterdir()) == [".lock"]  # no partial, no array
