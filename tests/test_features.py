"""Feature TSV decode, TSV -> HDF5 and FeatureStore (lazy and cached)."""

from __future__ import annotations

import base64
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.raw_fixtures import make_images, tsv_line, write_tsv
from vqa_cp.errors import VQAError
from vqa_cp.features import FeatureStore, decode_row, mem_available, tsv_to_hdf5


def convert(tmp_path: Path, lines: list[str], fp16: bool = False) -> Path:
    tsv = tmp_path / "f.tsv"
    write_tsv(tsv, lines)
    h5 = tmp_path / "out" / "features.h5"
    tsv_to_hdf5(tsv, h5, fp16=fp16, progress=False)
    return h5


def test_decode_row_round_trip() -> None:
    (image,) = make_images((7,), num_boxes=3, dim=5)
    row = decode_row(tsv_line(image).encode())
    assert (row.image_id, row.image_w, row.image_h) == (7, 647, 473)
    np.testing.assert_array_equal(row.boxes, image.boxes)
    np.testing.assert_array_equal(row.features, image.features)


@pytest.mark.parametrize("fp16", [False, True])
def test_tsv_to_hdf5(tmp_path: Path, fp16: bool) -> None:
    images = make_images((5, 3, 9), num_boxes=2, dim=3)
    h5_path = convert(tmp_path, [tsv_line(im) for im in images] + ["\n"], fp16=fp16)
    with h5py.File(h5_path, "r") as h5:
        assert h5["image_id"][:].tolist() == [5, 3, 9]
        assert h5["image_w"][:].tolist() == [645, 643, 649] and h5["image_h"][:].tolist() == [475, 477, 471]
        assert h5["features"].chunks == (1, 2, 3)
        assert h5["features"].dtype == (np.float16 if fp16 else np.float32)
        np.testing.assert_array_equal(h5["boxes"][:], np.stack([im.boxes for im in images]))
        expected = np.stack([im.features for im in images])
        np.testing.assert_array_equal(h5["features"][:], expected.astype(h5["features"].dtype))
    assert [p.name for p in h5_path.parent.iterdir()] == ["features.h5"]


def bad_base64_length() -> list[str]:
    a, b = make_images((1, 2))
    fields = tsv_line(b).rstrip("\n").split("\t")
    fields[5] = base64.b64encode(b.features.tobytes()[:-2]).decode()
    return [tsv_line(a), "\t".join(fields) + "\n"]


@pytest.mark.parametrize("lines, message", [
    (lambda: [tsv_line(make_images((1,))[0]).replace("\t", " ", 1)],
     r"line 1: 5 tab-separated fields, expected 6"),
    (lambda: [tsv_line(im) for im in make_images((1,))] + [tsv_line(make_images((2,))[0], num_boxes=3)],
     r"line 2 \(image_id 2\): boxes decode to 32 bytes, expected 3 x 4"),
    (bad_base64_length, r"line 2 \(image_id 2\): features decode to 22 bytes"),
    (lambda: [tsv_line(im) for im in make_images((1, 2, 1))],
     r"line 3: duplicate image_id 1 \(first at .*line 1\)"),
    (lambda: [tsv_line(make_images((1,))[0]), tsv_line(make_images((2,), dim=4)[0])],
     r"line 2 \(image_id 2\): features 2 x 4, but earlier images have 2 x 3"),
    (lambda: [tsv_line(make_images((1,))[0]).replace("1\t641", "x\t641", 1)], r"line 1: .*must be integers"),
], ids=["fields", "num_boxes", "base64_length", "duplicate", "shape", "not_int"])
def test_bad_rows_leave_no_file(tmp_path: Path, lines, message: str) -> None:
    with pytest.raises(VQAError, match=r"f\.tsv: " + message):
        convert(tmp_path, lines())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_empty_tsv(tmp_path: Path) -> None:
    with pytest.raises(VQAError, match="no feature rows"):
        convert(tmp_path, [])


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    return convert(tmp_path, [tsv_line(im) for im in make_images((5, 3, 9), num_boxes=2, dim=3)])


def test_feature_store_lazy(store_path: Path) -> None:
    images = make_images((5, 3, 9), num_boxes=2, dim=3)
    store = FeatureStore(store_path)
    assert (len(store), store.num_boxes, store.dim) == (3, 2, 3)
    assert store.rows(np.array([9, 5, 4, 3, 10])).tolist() == [2, 0, -1, 1, -1]
    for row, image in enumerate(images):
        out = store.features(row)
        assert out.dtype == torch.float32 and out.shape == (2, 3)
        assert torch.equal(out, torch.from_numpy(image.features))
    store._pid = -1  # as if inherited by a forked worker: must reopen, not reuse the handle
    handle = store._h5
    assert torch.equal(store.features(1), torch.from_numpy(images[1].features))
    assert store._h5 is not handle


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_feature_store_cache(store_path: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    images = make_images((5, 3, 9), num_boxes=2, dim=3)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:      1 kB\n")
    store = FeatureStore(store_path)
    messages: list[str] = []
    store.cache(dtype, meminfo=meminfo, log=messages.append)  # 3 x 2 x 3 values fit in 1 kB
    assert store.cached == dtype
    assert store.cache_bytes(dtype) == 18 * (2 if dtype == torch.float16 else 4)
    assert "3 images x 2 x 3" in messages[0]
    for row, image in enumerate(images):
        expected = torch.from_numpy(image.features).to(dtype).float()
        out = store.features(row)
        assert out.dtype == torch.float32 and torch.equal(out, expected)
        out += 1  # items are copies: the cache stays as it was
        assert torch.equal(store.features(row), expected)


def test_cache_refused_when_memory_short(store_path: Path, tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:      0 kB\n")
    store = FeatureStore(store_path)
    with pytest.raises(VQAError, match=r"feature cache needs 0\.0 GB but only 0\.0 GB is available"):
        store.cache(torch.float32, meminfo=meminfo, log=lambda _: None)
    assert store.cached is None
    assert mem_available(meminfo) == 0
    meminfo.write_text("MemTotal: 1 kB\n")
    with pytest.raises(VQAError, match="no MemAvailable line"):
        mem_available(meminfo)


def test_feature_store_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VQAError, match=r"features not found: .*tools/process\.sh"):
        FeatureStore(tmp_path / "features.h5")
