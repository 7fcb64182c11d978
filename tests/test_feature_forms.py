"""Every form of the features gives the same features.h5; bad copies are refused in one line, losing nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.raw_fixtures import make_images, tsv_line, tsv_path, write_raw, write_tsv
from vqa_cp import feature_forms as forms
from vqa_cp.dataset import load_training_data
from vqa_cp.errors import VQAError
from vqa_cp.features import FEATURES_STEP, h5_summary, iter_tsv, process_features, write_features_h5
from vqa_cp.files import write_json
from vqa_cp.plotting import read_boxes
from vqa_cp.processing import process_answers, process_text, processed_dir
from vqa_cp.provenance import DigestCache, file_entry, make_record, record_path, sha256_file
from vqa_cp.toy import ToyConfig, generate_toy_data

CONFIG = ToyConfig(seed=3, images=48, boxes=12, feature_dim=16, questions_per_image=2)


def quiet(_: str) -> None:
    pass


def arrays(data: Path) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(processed_dir(data) / "features.h5", "r") as h5:
        return {name: h5[name][:] for name in h5}, {k: h5.attrs[k] for k in h5.attrs}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """The same toy features written in every form (raw layout, not yet processed)."""
    root = tmp_path_factory.mktemp("forms")
    return {form: generate_toy_data(root / form, CONFIG, progress=False, features_form=form)["out_dir"]
            for form in forms.FORMS}


def copy_of(generated: dict[str, Path], form: str, tmp_path: Path) -> Path:
    data = tmp_path / form
    shutil.copytree(generated[form], data)
    return data


def test_every_form_gives_the_tsv_arrays(generated: dict[str, Path], tmp_path: Path) -> None:
    results = {}
    for form in forms.FORMS:
        data = copy_of(generated, form, tmp_path)
        messages: list[str] = []
        process_features(data, log=messages.append, progress=False)
        assert f"from the {form} copy" in messages[0]
        record = forms_record(data)
        assert record["params"] == {"fp16": False, "form": form} and record["checks"]["images"] == CONFIG.images
        assert "48 images: not the full release's 123,287" in messages[1]
        assert messages[2] == "note: 12 boxes x 16 features an image: not the release's 36 x 2048"
        results[form] = arrays(data)
        for name, entry in record["inputs"].items():  # the digests taken while reading are the files' own
            path = data / name
            if path.is_dir():
                listing = "".join(f"{f.name}\t{sha256_file(f)}\n" for f in sorted(path.glob("*.npz")))
                assert entry["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
            else:
                assert entry["sha256"] == sha256_file(path), name
        messages.clear()
        process_features(data, log=messages.append, progress=False)
        assert messages[0].startswith("skip features") and "48 images: not the full release's" in messages[1]
    ref, ref_attrs = results["tsv"]
    assert np.all(np.diff(ref["image_id"]) > 0)  # canonical order: ascending image_id
    raw = {r.image_id: r for _, r in iter_tsv(tsv_path(Path(generated["tsv"])), progress=False)}
    np.testing.assert_array_equal(ref["features"], np.stack([raw[i].features for i in ref["image_id"].tolist()]))
    np.testing.assert_array_equal(ref["boxes"], np.stack([raw[i].boxes for i in ref["image_id"].tolist()]))
    for form, (got, attrs) in results.items():
        assert attrs["form"] == form
        for name, values in got.items():
            np.testing.assert_array_equal(values, ref[name], err_msg=f"{form}: {name}")
        assert set(got) == (set(ref) if form != "hdf5_trainval36" else {"features", "image_id"})
        assert bool(attrs["has_boxes"]) == bool(attrs["has_image_size"]) == (form != "hdf5_trainval36")


def forms_record(data: Path) -> dict:
    return json.loads(record_path(processed_dir(data), FEATURES_STEP).read_text())


def test_the_forms_order_images_differently(generated: dict[str, Path]) -> None:
    data = Path(generated["lxmert_tsv"]) / "features"
    ids = np.concatenate([forms.tsv_index(data / name, "lxmert_tsv", CONFIG.feature_dim, progress=False)[0]
                          for name in ("train2014_obj36.tsv", "val2014_obj36.tsv")])
    assert ids.tolist() != sorted(ids.tolist())  # val2014 shuffled: conversion must sort
    copy = forms.identify_copy(forms.find_feature_files(data))
    assert copy.form == "lxmert_tsv" and [p.name for p in copy.files] == ["train2014_obj36.tsv", "val2014_obj36.tsv"]


def test_restricted_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "trainval36_imgid2idx.pkl"
    path.write_bytes(pickle.dumps({1: Evil()}, protocol=2))
    with pytest.raises(VQAError, match=r"trainval36_imgid2idx\.pkl: refers to (posix|os)\.system; .*refused"):
        forms.load_index_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({5: 0, 7: "1"}, protocol=2))
    with pytest.raises(VQAError, match=r"image_id 7: value '1' is a str"):
        forms.load_index_pickle(path)
    path.write_bytes(pickle.dumps({5: 0, 7: 1}, protocol=0))  # Python 2's default protocol
    assert forms.load_index_pickle(path) == {5: 0, 7: 1}
    path.write_bytes(pickle.dumps({5: 0, 7: 1}, protocol=2)[:-3])
    with pytest.raises(VQAError, match="not a readable index pickle"):
        forms.load_index_pickle(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(VQAError, match="holds a list, not a dict"):
        forms.load_index_pickle(path)


def test_written_pickles_are_python2_protocol(generated: dict[str, Path]) -> None:
    data = Path(generated["hdf5_split36"]) / "features" / "train36_imgid2idx.pkl"
    assert data.read_bytes()[:2] == b"\x80\x02"


# ------------------------------------------------------------------------- bad copies


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def tsv_35_boxes(data: Path) -> None:
    path = tsv_path(data)
    lines = path.read_bytes().splitlines(keepends=True)
    fields = lines[1].split(b"\t")
    boxes = np.frombuffer(base64.b64decode(fields[4]), dtype=np.float32).reshape(-1, 4)[:-1]
    feats = np.frombuffer(base64.b64decode(fields[5]), dtype=np.float32).reshape(len(boxes) + 1, -1)[:-1]
    fields[3:6] = [b"%d" % len(boxes), base64.b64encode(boxes.tobytes()), base64.b64encode(feats.tobytes()) + b"\r\n"]
    lines[1] = b"\t".join(fields)
    path.write_bytes(b"".join(lines))


def tsv_box_outside(data: Path) -> None:
    path = tsv_path(data)
    lines = path.read_bytes().splitlines(keepends=True)
    fields = lines[2].split(b"\t")
    boxes = np.frombuffer(base64.b64decode(fields[4]), dtype=np.float32).reshape(-1, 4).copy()
    boxes[3, 2] = int(fields[1]) + 0.5
    fields[4] = base64.b64encode(boxes.tobytes())
    lines[2] = b"\t".join(fields)
    path.write_bytes(b"".join(lines))


def h5_edit(name: str, edit) -> callable:
    def apply(data: Path) -> None:
        with h5py.File(data / "features" / name, "a") as h5:
            edit(h5)
    return apply


def set_nan(h5: h5py.File) -> None:
    h5["image_features"][3, 2, 1] = np.nan


def flat_features(h5: h5py.File) -> None:
    values = h5["image_features"][:]
    del h5["image_features"]
    h5["image_features"] = values.reshape(len(values), -1)


def box_outside(h5: h5py.File) -> None:
    h5["image_bb"][2, 0, 2] = 5000.0


def bad_pickle(data: Path) -> None:
    path = data / "features" / "val36_imgid2idx.pkl"
    index = forms.load_index_pickle(path)
    index[next(iter(index))] = "0"
    path.write_bytes(pickle.dumps(index, protocol=2))


def npz_truncated(data: Path) -> None:
    truncate(sorted((data / "features" / "npz").glob("*.npz"))[5])


def npz_zip_truncated(data: Path) -> None:
    folder = data / "features" / "npz"
    with zipfile.ZipFile(data / "features" / "npz.zip", "w") as z:
        for f in sorted(folder.glob("*.npz")):
            z.write(f, f"npz/{f.name}")
    shutil.rmtree(folder)
    truncate(data / "features" / "npz.zip", 0.5)


def html_page(data: Path) -> None:
    (data / "features" / "train2014_obj36.tsv").write_text("<!DOCTYPE html><html><body>NoSuchBucket</body></html>")


def missing_image(data: Path) -> None:
    path = data / "features" / "train2014_obj36.tsv"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:]))


def two_forms(data: Path) -> None:
    write_tsv(tsv_path(data), [tsv_line(im) for im in make_images()])


BAD = [
    ("tsv", lambda d: truncate(tsv_path(d)), r"trainval_resnet101_faster_rcnn_genome_36\.tsv: truncated"),
    ("lxmert_tsv", lambda d: truncate(d / "features" / "val2014_obj36.tsv"), r"val2014_obj36\.tsv: truncated"),
    ("tsv", tsv_35_boxes, r"genome_36\.tsv: line 2 \(image_id \d+\): features 11 x 16, but earlier images have 12 x"),
    ("tsv", tsv_box_outside, r"genome_36\.tsv: line 3 \(image_id \d+\): box 3 \([\d., ]+\) lies outside its \d+ x "
     r"\d+ image"),
    ("hdf5_trainval36", h5_edit("trainval36.hdf5", flat_features), r"trainval36\.hdf5: image_features has shape"),
    ("hdf5_trainval36", h5_edit("trainval36.hdf5", set_nan), r"trainval36\.hdf5: row 3 \(image_id \d+\): .*NaN"),
    ("hdf5_split36", h5_edit("train36.hdf5", box_outside), r"train36\.hdf5: row 2 \(image_id \d+\): "
     r"spatial_features disagree with image_bb"),
    ("hdf5_split36", bad_pickle, r"val36_imgid2idx\.pkl: image_id \d+: value '0' is a str"),
    ("npz", npz_truncated, r"npz/COCO_\w+\.npz: not a readable \.npz"),
    ("npz", npz_zip_truncated, r"npz\.zip: not a readable zip"),
    ("lxmert_tsv", html_page, r"train2014_obj36\.tsv: an HTML/XML page"),
    ("lxmert_tsv", missing_image, r"images that \S+ uses have no features \(first ids: \d+"),
    ("lxmert_tsv", two_forms, r"two forms of the features at once: (tsv|lxmert_tsv) .* and (tsv|lxmert_tsv)"),
]


@pytest.mark.parametrize("form, damage, message", BAD, ids=[
    "tsv_truncated", "lxmert_truncated", "tsv_35_boxes", "tsv_box_outside",
    "hdf5_shape", "hdf5_nan", "hdf5_box_outside", "pickle_str",
    "npz_truncated", "npz_zip_truncated", "html", "missing_image", "two_forms"])
def test_bad_copy_is_refused_and_nothing_is_lost(generated: dict[str, Path], tmp_path: Path, form: str, damage,
                                                 message: str) -> None:
    data = copy_of(generated, form, tmp_path)
    process_features(data, log=quiet, progress=False)
    processed = processed_dir(data)
    before = {p.name: p.read_bytes() for p in [processed / "features.h5", record_path(processed, FEATURES_STEP)]}
    damage(data)
    with pytest.raises(VQAError, match=message) as info:
        process_features(data, log=quiet, progress=False)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in [processed / "features.h5", record_path(processed, FEATURES_STEP)]} \
        == before
    assert sorted(p.name for p in processed.iterdir()) == [".records", "features.h5"]


# ------------------------------------------------------------------------- no copy, extracted features, no boxes


def test_extracted_features_are_kept_and_no_features_say_how_to_make_them(tmp_path: Path) -> None:
    write_raw(tmp_path)
    tsv_path(tmp_path).unlink()
    with pytest.raises(VQAError, match=r"no features in .*python tools/extract_features\.py --images "
                                       r"\S+/images/train2014\.zip \S+/images/val2014\.zip --weights \S+/detector"):
        process_features(tmp_path, log=quiet)
    processed = processed_dir(tmp_path)
    rows = [(f"image {im.image_id}", im) for im in make_images()]
    write_features_h5(rows, processed / "features.h5")
    params = {"form": "extracted", "select": "caffe", "weights_sha256": "0" * 64, "fp16": False}
    outputs = {"features.h5": file_entry(processed / "features.h5", DigestCache(processed), h5_summary)}
    write_json(record_path(processed, FEATURES_STEP), make_record(FEATURES_STEP, params, {}, outputs))
    messages: list[str] = []
    process_features(tmp_path, log=messages.append)
    assert messages == [f"skip features: {processed / 'features.h5'} holds extracted features (no copy in the raw "
                        "layout)"]


def test_visualize_says_this_copy_has_no_boxes(generated: dict[str, Path], tmp_path: Path) -> None:
    data = copy_of(generated, "hdf5_trainval36", tmp_path)
    messages: list[str] = []
    process_features(data, log=messages.append, progress=False)
    assert "has no boxes" in messages[-1]
    with pytest.raises(VQAError, match=r"features\.h5: this copy of the features \(form hdf5_trainval36\) has no "
                                       r"boxes"):
        read_boxes(processed_dir(data) / "features.h5", np.array([0, 1]))
    process_text(data, log=quiet)  # training is unaffected
    process_answers(data, log=quiet)
    training = load_training_data(data)
    image_ids, features = arrays(data)[0]["image_id"], arrays(data)[0]["features"]
    row = int(training.features.rows(image_ids[5:6])[0])
    np.testing.assert_array_equal(training.features.features(row).numpy(), features[5])


def test_image_sizes_recovered_exactly_from_spatial_features() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(x) for x in rng.integers(100, 1500, 2))
        corner = rng.random((36, 2)) * 0.5 * [w, h]
        boxes = np.concatenate([corner, corner + rng.random((36, 2)) * 0.45 * [w, h] + 1], axis=1).astype(np.float32)
        row = forms.Row(1, w, h, boxes, np.zeros((36, 1), dtype=np.float32))
        spatial = forms._spatial(row).astype(np.float32)  # computed in float64, stored as float32
        assert forms.recover_sizes("x", boxes, spatial) == (w, h)
        # computed in float32 as a converter does with float32 boxes: x1/w, y1/h, x1/w + bw/w, ..., bw/w, bh/h
        scaled = boxes[:, :2] / np.array([w, h], dtype=np.float32)
        extent = (boxes[:, 2:] - boxes[:, :2]) / np.array([w, h], dtype=np.float32)
        spatial32 = np.concatenate([scaled, scaled + extent, extent], axis=1)
        assert spatial32.dtype == np.float32 and forms.recover_sizes("x", boxes, spatial32) == (w, h)
    with pytest.raises(VQAError, match=r"x: spatial_features disagree with image_bb"):
        forms.recover_sizes("x", boxes, spatial * np.float32(1.01))


def test_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    write_raw(tmp_path)
    images = make_images((1, 2, 3, 2))
    write_tsv(tsv_path(tmp_path), [tsv_line(im) for im in images])
    with pytest.raises(VQAError, match=r"genome_36\.tsv: duplicate image_id 2"):
        process_features(tmp_path, log=quiet, progress=False)
    assert not (processed_dir(tmp_path) / "features.h5").exists()


def test_make_toy_data_writes_the_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tools.make_toy_data import main

    main(["--out", str(tmp_path / "d"), "--images", "20", "--boxes", "12", "--feature-dim", "16",
          "--features-form", "hdf5_split36"])
    names = sorted(p.name for p in (tmp_path / "d" / "features").iterdir())
    assert names == ["train36.hdf5", "train36_imgid2idx.pkl", "val36.hdf5", "val36_imgid2idx.pkl"]
    assert not (tmp_path / "d" / "trainval_36").exists()
    assert forms.identify_copy(forms.form_files(tmp_path / "d")).form == "hdf5_split36"


def test_tsv_index_matches_a_full_scan(tmp_path: Path) -> None:
    images = make_images((7, 3, 11, 5), num_boxes=4, dim=6)
    lines = [tsv_line(im).encode() for im in images]
    lines[1] = lines[1].replace(b"\n", b"\r\n")
    lines[2] = tsv_line(images[2], num_boxes=3).encode()  # not as its header predicts: read through
    path = tmp_path / "f.tsv"
    path.write_bytes(lines[0] + b"\n" + b"".join(lines[1:]))
    ids, offsets = forms.tsv_index(path, "tsv", 6, progress=False)
    assert ids.tolist() == [7, 3, 11, 5]
    starts = np.cumsum([0, len(lines[0]) + 1] + [len(x) for x in lines[1:3]])
    assert offsets.tolist() == starts.tolist()


@pytest.mark.parametrize("layout", ["contiguous", "chunked_gzip"])
def test_hdf5_read_once_or_through_h5py_gives_the_same(generated: dict[str, Path], tmp_path: Path,
                                                       layout: str) -> None:
    data = copy_of(generated, "hdf5_trainval36", tmp_path)
    path = data / "features" / "trainval36.hdf5"
    if layout == "chunked_gzip":  # no byte offset to read from: h5py reads it, a second read digests it
        with h5py.File(path, "r") as h5:
            values = h5["image_features"][:]
        with h5py.File(path, "w") as h5:
            h5.create_dataset("image_features", data=values, chunks=(2, 12, 16), compression="gzip")
    assert (forms._raw_offset(path) is None) == (layout == "chunked_gzip")
    process_features(data, log=quiet, progress=False)
    reference = copy_of(generated, "tsv", tmp_path)
    process_features(reference, log=quiet, progress=False)
    np.testing.assert_array_equal(arrays(data)[0]["features"], arrays(reference)[0]["features"])
    inputs = forms_record(data)["inputs"]
    for name in ("features/trainval36.hdf5", "features/trainval36_imgid2idx.pkl"):
        assert inputs[name]["sha256"] == sha256_file(data / name)


def test_find_feature_files_by_name(tmp_path: Path) -> None:
    for name in ("README.txt", "processed/features.h5", ".cache/x.tsv", "data/trainval36.hdf5",
                 "data/trainval36_imgid2idx.pkl", "npz/a/COCO_val2014_000000000042.npz", "other.zip"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("trainval_36/x.tsv", "1\t2\n")
    found = [p.relative_to(tmp_path).as_posix() for p in forms.find_feature_files(tmp_path)]
    assert found == ["data/trainval36.hdf5", "data/trainval36_imgid2idx.pkl", "npz/a"]


def test_rehearsal_data_in_another_form_gives_the_same_features(tmp_path: Path) -> None:
    from vqa_cp.rehearsal import RehearsalConfig, generate_rehearsal_data

    config = RehearsalConfig(scale=0.0005)
    results = {}
    for form in ("tsv", "hdf5_split36"):
        generate_rehearsal_data(tmp_path / form, config, progress=False, features_form=form)
        process_features(tmp_path / form, log=quiet, progress=False)
        results[form] = arrays(tmp_path / form)[0]
    assert results["tsv"]["features"].shape == (62, 36, 2048)
    for name, values in results["tsv"].items():  # the real-shape sizes are recovered exactly from spatial_features
        np.testing.assert_array_equal(results["hdf5_split36"][name], values, err_msg=name)


def test_generated_npz_files_are_written_as_their_publisher_writes_them(generated: dict[str, Path]) -> None:
    """np.savez_compressed with `info` a pickled object array: deflated members, which the reader inflates."""
    first = sorted((Path(generated["npz"]) / "features" / "npz").glob("*.npz"))[0]
    with zipfile.ZipFile(first) as z:
        assert {i.filename for i in z.infolist()} == {"x.npy", "bbox.npy", "num_bbox.npy", "image_h.npy",
                                                       "image_w.npy", "info.npy"}
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(first)["info"]
