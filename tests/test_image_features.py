"""tools/extract_features.py (vqa_cp.image_features) with a stand-in detector: sources, decoding, the
features.h5 and its record, corrupt images, resuming after kill -9, torchrun, and main.py training on it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.extract_fakes import (
    FakeDetector,
    coco_name,
    coco_zip,
    decoded,
    fake_output,
    fake_weights,
    jpeg_bytes,
    random_image,
    write_zip,
)
from vqa_cp import image_features as imf
from vqa_cp.errors import VQAError
from vqa_cp.features import FEATURES_FILE, decode_row, features_problem
from vqa_cp.provenance import read_record, record_path

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "extract_fakes.py"


def run(args: list[str], detector: FakeDetector | None = None, log=None) -> imf.ExtractStats:
    detector = detector or FakeDetector()
    return imf.main([*args, "--device", "cpu", "--no-progress"], make_detector=lambda folder, device: detector,
                    log=log or (lambda message: None))


def flags(images: list[Path], weights: Path, data: Path, *extra: str) -> list[str]:
    return ["--images", *map(str, images), "--weights", str(weights), "--data", str(data), "--num-workers", "0",
            *extra]


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {name: h5[name][:] for name in h5}


@pytest.fixture()
def weights(tmp_path) -> Path:
    return fake_weights(tmp_path / "detector")


# ------------------------------------------------------------------------------------------ sources, decoding


def test_images_are_listed_from_folders_and_zips_sorted_by_id_once_each(tmp_path):
    zipped = coco_zip(tmp_path / "train2014.zip", [30, 5, 12])
    folder = tmp_path / "val2014"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for image_id in (7, 12):  # 12 also in the zip: kept once, from the first source given
        random_image(rng).save(folder / coco_name(image_id, "val2014"))
    (folder / "notes.txt").write_text("not an image")
    messages = []
    entries = imf.list_images([zipped, folder], log=messages.append)
    assert [e.image_id for e in entries] == [5, 7, 12, 30]
    assert entries[2].source == str(zipped) and entries[2].name == f"train2014/{coco_name(12)}"
    assert len(messages) == 1 and messages[0].startswith("1 duplicate image ids")
    # the same images from an extracted folder give the same list digest as from the zip
    extracted = tmp_path / "extracted"
    import zipfile
    zipfile.ZipFile(zipped).extractall(extracted)
    assert imf.list_digest(imf.list_images([extracted])) == imf.list_digest(imf.list_images([zipped]))
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(VQAError, match="holiday.jpg: no image id"):
        imf.list_images([folder])
    with pytest.raises(VQAError, match="image source not found"):
        imf.list_images([tmp_path / "missing.zip"])


def test_every_colour_mode_decodes_to_rgb(tmp_path):
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), "L")
    assert decoded_equal(imf.decode_image(png(gray)), [[[0] * 3, [100] * 3], [[200] * 3, [255] * 3]])
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8), "RGBA")
    assert decoded_equal(imf.decode_image(png(rgba)), [[[10, 20, 30], [40, 50, 60]]])  # alpha dropped
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    assert decoded_equal(imf.decode_image(png(palette, transparency=0)), [[[255, 0, 0], [0, 0, 255]]])
    deep = Image.fromarray(np.array([[0, 0x1234, 0xFFFF]], dtype=np.uint16))
    assert decoded_equal(imf.decode_image(png(deep)), [[[0] * 3, [0x12] * 3, [0xFF] * 3]])
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan/black, full magenta + yellow: red
    red = imf.decode_image(jpeg_bytes(cmyk, quality=100))
    assert red.shape == (8, 8, 3) and np.abs(red.astype(int) - [255, 0, 0]).max() <= 3


def png(image: Image.Image, **info) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **info)
    return out.getvalue()


def decoded_equal(array: np.ndarray, expected) -> bool:
    return array.dtype == np.uint8 and np.array_equal(array, np.array(expected, dtype=np.uint8))


def test_corrupt_images_raise_when_decoded():
    good = jpeg_bytes(random_image(np.random.default_rng(0), 40, 30))
    for bad in (good[: len(good) // 2], b"not an image at all"):
        with pytest.raises(Exception):  # noqa: B017 - any decoder error; the dataset reports it by name
            imf.decode_image(bad)


# ------------------------------------------------------------------------------------------ the command


def test_features_h5_tsv_and_record(tmp_path, weights):
    ids = [3, 1, 9, 4, 7]
    zipped = coco_zip(tmp_path / "train2014.zip", ids, seed=2)
    data = tmp_path / "data"
    data.mkdir()
    run(flags([zipped], weights, data, "--block-size", "2", "--batch-size", "3", "--tsv", "--select", "lxmert"))
    processed = data / "processed"
    arrays = h5_arrays(processed / FEATURES_FILE)
    assert arrays["image_id"].tolist() == sorted(ids)
    import zipfile
    with zipfile.ZipFile(zipped) as zf:
        for row, image_id in enumerate(sorted(ids)):
            want = fake_output(decoded(zf.read(f"train2014/{coco_name(image_id)}")), "lxmert")
            np.testing.assert_array_equal(arrays["features"][row], want["features"])
            np.testing.assert_array_equal(arrays["boxes"][row], want["boxes"])
            assert (arrays["image_w"][row], arrays["image_h"][row]) == (want["image_w"], want["image_h"])
    lines = (processed / imf.TSV_NAME).read_bytes().split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == len(ids) + 1
    for row, line in enumerate(lines[:-1]):
        tsv = decode_row(line)
        assert tsv.image_id == arrays["image_id"][row]
        np.testing.assert_array_equal(tsv.features, arrays["features"][row])
        np.testing.assert_array_equal(tsv.boxes, arrays["boxes"][row])
    record = read_record(record_path(processed, "features"))
    assert record["params"] == {"form": "extracted", "select": "lxmert", "weights_sha256": record["params"][
        "weights_sha256"], "amp": "none", "fp16": False}
    import hashlib
    assert record["params"]["weights_sha256"] == hashlib.sha256((weights / "pytorch_model.bin").read_bytes()
                                                                 ).hexdigest()
    assert record["inputs"]["images"]["count"] == len(ids) and record["failed_images"] == []
    assert features_problem(processed) is None
    assert not (processed / imf.WORK_DIR).exists()
    # the same command again does nothing
    again = FakeDetector()
    messages = []
    run(flags([zipped], weights, data, "--block-size", "2", "--tsv", "--select", "lxmert"), again, messages.append)
    assert again.images == 0 and any(m.startswith("skip:") for m in messages)
    # a TSV asked for later is written from features.h5, the same bytes, nothing extracted again
    tsv = (processed / imf.TSV_NAME).read_bytes()
    (processed / imf.TSV_NAME).unlink()
    run(flags([zipped], weights, data, "--block-size", "2", "--tsv", "--select", "lxmert"), again)
    assert again.images == 0 and (processed / imf.TSV_NAME).read_bytes() == tsv
    # another selection would replace an extraction: refused without --force
    with pytest.raises(VQAError, match="already exists, extracted with other .* pass --force"):
        run(flags([zipped], weights, data))
    half = FakeDetector()
    run(flags([zipped], weights, data, "--force", "--fp16", "--amp", "bf16"), half)
    arrays = h5_arrays(processed / FEATURES_FILE)
    assert arrays["features"].dtype == np.float16 and features_problem(processed) is None
    assert half.amps == {"bf16"} and read_record(record_path(processed, "features"))["params"]["amp"] == "bf16"


def test_corrupt_images_are_named_the_run_goes_on_and_ends_in_error(tmp_path, weights):
    rng = np.random.default_rng(3)
    good = {i: jpeg_bytes(random_image(rng)) for i in (1, 2, 5)}
    members = {f"train2014/{coco_name(i)}": data for i, data in good.items()}
    members[f"train2014/{coco_name(3)}"] = good[1][: len(good[1]) // 2]  # truncated JPEG
    members[f"train2014/{coco_name(4)}"] = b"<html>not an image</html>"
    members[f"train2014/{coco_name(6)}"] = jpeg_bytes(random_image(rng, 4, 20))  # the detector refuses it
    zipped = write_zip(tmp_path / "train2014.zip", members)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(VQAError) as error:
        run(flags([zipped], weights, data, "--block-size", "3", "--tsv"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("3 images could not be used")
    for image_id in (3, 4, 6):
        assert f"{zipped}:train2014/{coco_name(image_id)}" in message
    assert "fewer than 4 boxes" in message
    processed = data / "processed"
    assert h5_arrays(processed / FEATURES_FILE)["image_id"].tolist() == [1, 2, 5]  # written before the error
    assert features_problem(processed) is None and (processed / imf.TSV_NAME).is_file()
    assert [f[0] for f in read_record(record_path(processed, "features"))["failed_images"]] == [3, 4, 6]
    with pytest.raises(VQAError, match="^3 images could not be used"):  # said again by a rerun that skips
        run(flags([zipped], weights, data, "--block-size", "3", "--tsv"))


def test_checks_before_work(tmp_path, weights, monkeypatch):
    zipped = coco_zip(tmp_path / "train2014.zip", [1, 2])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(VQAError, match="pytorch_model.bin: missing"):
        run(flags([zipped], tmp_path, data))
    with pytest.raises(VQAError, match="not a readable zip"):
        run(flags([weights / "config.yaml"], weights, data))
    # a features.h5 made from a feature copy is not replaced without --force
    (data / "processed").mkdir()
    (data / "processed" / FEATURES_FILE).write_bytes(b"from a copy")
    with pytest.raises(VQAError, match="unknown origin .* pass --force"):
        run(flags([zipped], weights, data))
    monkeypatch.setattr(imf.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 100))
    detector = FakeDetector()
    with pytest.raises(VQAError, match=r"extraction needs about .* GB free .* but 0.00 GB is free"):
        run(flags([zipped], weights, data, "--force"), detector)
    assert detector.images == 0


# ------------------------------------------------------------------------------------------ resume, torchrun


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def test_resume_after_kill_9_recomputes_no_finished_block_and_gives_the_same_bytes(tmp_path, weights):
    ids = list(range(100, 124))
    zipped = coco_zip(tmp_path / "train2014.zip", ids, seed=4)
    args = ["--block-size", "4", "--batch-size", "2", "--tsv"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    run(flags([zipped], weights, whole, *args))
    count = tmp_path / "count.txt"
    proc = subprocess.Popen([sys.executable, str(FAKES), *flags([zipped], weights, killed, *args),
                             "--num-workers", "1", "--device", "cpu", "--no-progress"],
                            env=_env(FAKE_DETECTOR_DELAY="0.1", FAKE_DETECTOR_COUNT=str(count)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    blocks = []
    deadline = time.time() + 60
    while len(blocks) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        blocks = list((killed / "processed" / imf.WORK_DIR).glob("*/block_*.npz"))
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "processed" / imf.WORK_DIR).glob("*/block_*.npz")))
    assert 2 <= done < len(ids) // 4 and not (killed / "processed" / FEATURES_FILE).exists()
    assert sum(map(int, count.read_text().split())) >= 4 * done
    resumed = FakeDetector()
    messages = []
    run(flags([zipped], weights, killed, *args), resumed, messages.append)
    assert resumed.images == len(ids) - 4 * done  # no finished block computed again
    assert any(m.startswith(f"resuming: {done} of 6 blocks") for m in messages)
    for name in (FEATURES_FILE, imf.TSV_NAME):  # byte-identical to the uninterrupted run
        assert (killed / "processed" / name).read_bytes() == (whole / "processed" / name).read_bytes()


def _members(ids, seed: int, broken: dict[int, bytes] | None = None) -> dict[str, bytes]:
    """COCO zip members with random pixels, the same bytes for an id whatever else is in the zip."""
    members = {}
    for image_id in ids:
        image = random_image(np.random.default_rng(seed * 1000 + image_id))
        members[f"train2014/{coco_name(image_id)}"] = (broken or {}).get(image_id, jpeg_bytes(image))
    return members


def test_fixing_one_corrupt_image_extracts_only_its_block_without_force(tmp_path, weights):
    ids = list(range(1, 10))
    args = ["--block-size", "3", "--batch-size", "2", "--tsv"]
    data = tmp_path / "data"
    data.mkdir()
    processed = data / "processed"
    broken = write_zip(tmp_path / "broken.zip", _members(ids, 13, {5: b"<html>not an image</html>"}))
    with pytest.raises(VQAError, match="^1 images could not be used"):
        run(flags([broken], weights, data, *args))
    assert h5_arrays(processed / FEATURES_FILE)["image_id"].tolist() == [1, 2, 3, 4, 6, 7, 8, 9]
    assert len(list((processed / imf.WORK_DIR).glob("*/block_*.npz"))) == 3  # kept for the rerun
    fixed = write_zip(tmp_path / "fixed.zip", _members(ids, 13))  # the user replaced the corrupt file
    again = FakeDetector()
    messages = []
    run(flags([fixed], weights, data, *args), again, messages.append)  # no --force: the same extraction
    assert again.images == 3 and any(m.startswith("resuming: 2 of 3 blocks") for m in messages)
    clean = tmp_path / "clean"
    clean.mkdir()
    run(flags([fixed], weights, clean, *args))
    for name in (FEATURES_FILE, imf.TSV_NAME):  # as a clean run's, byte for byte
        assert (processed / name).read_bytes() == (clean / "processed" / name).read_bytes()
    assert read_record(record_path(processed, "features"))["failed_images"] == []
    assert features_problem(processed) is None and not (processed / imf.WORK_DIR).exists()
    # images added: the same extraction, completed without --force
    more = write_zip(tmp_path / "more.zip", _members([*ids, 10, 11], 13))
    run(flags([more], weights, data, *args))
    assert h5_arrays(processed / FEATURES_FILE)["image_id"].tolist() == [*ids, 10, 11]
    # other settings still need --force, and leave this setting's blocks alone
    with pytest.raises(VQAError, match="extracted with other weights or flags .* pass --force"):
        run(flags([more], weights, data, *args, "--select", "lxmert"))


def test_failures_do_not_replace_a_features_h5_that_has_those_images(tmp_path, weights):
    ids = [1, 2, 3, 4]
    data = tmp_path / "data"
    data.mkdir()
    h5_path = data / "processed" / FEATURES_FILE
    run(flags([write_zip(tmp_path / "good.zip", _members(ids, 14))], weights, data))
    good = h5_path.read_bytes()
    broken = write_zip(tmp_path / "broken.zip", _members(ids, 14, {3: b"truncated"}))
    with pytest.raises(VQAError) as error:
        run(flags([broken], weights, data, "--force", "--select", "lxmert"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("1 images could not be used")
    assert f"{h5_path} kept: it has features for 1 of them (image_id 3)" in message
    assert h5_path.read_bytes() == good  # not replaced by a file lacking image 3
    assert read_record(record_path(data / "processed", "features"))["params"]["select"] == "caffe"
    new = list((data / "processed" / imf.WORK_DIR).glob(f"*/{FEATURES_FILE}"))
    assert len(new) == 1 and str(new[0]) in message and h5_arrays(new[0])["image_id"].tolist() == [1, 2, 4]
    again = FakeDetector()  # said again, nothing extracted again, until the image is fixed
    with pytest.raises(VQAError, match="kept: it has features for 1 of them"):
        run(flags([broken], weights, data, "--force", "--select", "lxmert"), again)
    assert again.images == 0 and h5_path.read_bytes() == good


def test_a_run_lacking_images_of_the_extracted_file_is_refused_without_force(tmp_path, weights):
    ids = list(range(1, 13))
    data = tmp_path / "data"
    data.mkdir()
    h5_path = data / "processed" / FEATURES_FILE
    run(flags([write_zip(tmp_path / "all.zip", _members(ids, 16))], weights, data, "--block-size", "4"))
    before = h5_path.read_bytes()
    part = write_zip(tmp_path / "part.zip", _members([2, 5, 9], 16))  # train2014.zip forgotten, say
    detector = FakeDetector()
    with pytest.raises(VQAError) as error:
        run(flags([part], weights, data, "--block-size", "4"), detector)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{h5_path}: this run's images lack 9 of the 12 images")
    assert "(image_id 1, 3, 4, 6, 7 ...)" in message and "pass --force" in message and "add their sources" in message
    assert detector.images == 0 and h5_path.read_bytes() == before
    assert not (data / "processed" / imf.WORK_DIR).exists()
    run(flags([part], weights, data, "--block-size", "4", "--force"))  # replaced when asked to
    assert h5_arrays(h5_path)["image_id"].tolist() == [2, 5, 9]


def test_an_up_to_date_run_removes_its_unneeded_work_folder(tmp_path, weights):
    ids = [1, 2, 3, 4, 5, 6]
    args = ["--block-size", "2"]
    data = tmp_path / "data"
    data.mkdir()
    processed = data / "processed"
    good = write_zip(tmp_path / "good.zip", _members(ids, 17))
    run(flags([good], weights, data, *args))
    broken = write_zip(tmp_path / "broken.zip", _members(ids, 17, {3: b"truncated"}))
    with pytest.raises(VQAError, match="kept: it has features for 1 of them"):
        run(flags([broken], weights, data, *args, "--force"))
    work = list((processed / imf.WORK_DIR).iterdir())
    assert len(work) == 1 and (work[0] / FEATURES_FILE).is_file()
    other = processed / imf.WORK_DIR / "0123456789abcdef"  # another setting's blocks: kept
    other.mkdir()
    (other / "block_000000_0.npz").write_bytes(b"x" * 10)
    messages = []
    run(flags([good], weights, data, *args), log=messages.append)  # the original image restored
    assert messages[0].startswith("skip:") and messages[1].startswith(f"removed {work[0]} (")
    assert len(messages) == 2 and not work[0].exists() and other.is_dir()
    # a record listing failed images keeps the blocks of its images (the rerun once they are fixed needs them)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(VQAError, match="^1 images could not be used"):
        run(flags([broken], weights, fresh, *args))
    blocks = sorted((fresh / "processed" / imf.WORK_DIR).glob("*/block_*.npz"))
    stray = blocks[0].parent / "block_000009_0000000000000000.npz"
    stray.write_bytes(b"x")
    messages = []
    with pytest.raises(VQAError, match="^1 images could not be used"):
        run(flags([broken], weights, fresh, *args), log=messages.append)
    assert sorted(blocks[0].parent.iterdir()) == blocks and len(blocks) == 3
    assert messages[1].startswith(f"removed 1 files (0.00 GB) of {blocks[0].parent} not needed")


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_decoding_workers_die_with_a_killed_main_process(tmp_path, weights):
    zipped = coco_zip(tmp_path / "train2014.zip", range(1, 41), seed=15)
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen([sys.executable, str(FAKES), *flags([zipped], weights, data, "--block-size", "4"),
                             "--num-workers", "2", "--device", "cpu", "--no-progress"],
                            env=_env(FAKE_DETECTOR_DELAY="0.1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    workers: list[int] = []
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline and not (
            len(workers) == 2 and list((data / "processed" / imf.WORK_DIR).glob("*/block_*.npz"))):
        time.sleep(0.05)
        workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2, proc.stderr.read().decode()[-2000:] if proc.poll() else workers
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as a user's kill -9 of its pid
    proc.wait()
    deadline = time.time() + 2.5
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # not to leak them when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"decoding workers {left} outlived their parent"


def test_a_kill_between_assembly_and_record_is_finished_by_the_next_run(tmp_path, weights, monkeypatch):
    zipped = coco_zip(tmp_path / "train2014.zip", [1, 2, 3], seed=7)
    data = tmp_path / "data"
    data.mkdir()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(imf, "make_record", killed)
        with pytest.raises(KeyboardInterrupt):
            run(flags([zipped], weights, data, "--tsv"))
    processed = data / "processed"
    assert (processed / FEATURES_FILE).is_file() and features_problem(processed) is not None
    assert (processed / imf.TSV_NAME).is_file()  # moved into place: the next run knows it as the assembled one
    again = FakeDetector()
    run(flags([zipped], weights, data, "--tsv"), again)
    assert again.images == 0 and features_problem(processed) is None
    assert not (processed / imf.WORK_DIR).exists()
    tsv = read_record(record_path(processed, "features"))["tsv"]
    assert tsv["path"] == imf.TSV_NAME  # relative to processed/: a moved data folder keeps it
    assert tsv["size"] == (processed / imf.TSV_NAME).stat().st_size
    import hashlib
    assert tsv["sha256"] == hashlib.sha256((processed / imf.TSV_NAME).read_bytes()).hexdigest()


def _killed_before_finish(monkeypatch, args: list[str]) -> None:
    """A run killed after its features.h5 (and TSV) are assembled in the work folder, before `finish`."""
    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(imf, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            run(args)


def _tsv_of(arrays: dict[str, np.ndarray]) -> bytes:
    """The TSV an independent writer makes of float32 arrays (base64 float32, \\r\\n rows)."""
    import base64
    lines = []
    for r, image_id in enumerate(arrays["image_id"].tolist()):
        boxes = base64.b64encode(arrays["boxes"][r].astype(np.float32).tobytes()).decode()
        feats = base64.b64encode(arrays["features"][r].astype(np.float32).tobytes()).decode()
        lines.append(f"{image_id}\t{arrays['image_w'][r]}\t{arrays['image_h'][r]}\t{len(arrays['boxes'][r])}\t"
                     f"{boxes}\t{feats}\r\n")
    return "".join(lines).encode()


def test_a_rerun_after_assembly_with_other_fp16_or_tsv_reassembles_from_the_blocks(tmp_path, weights, monkeypatch):
    zipped = coco_zip(tmp_path / "train2014.zip", [1, 2, 3], seed=9)
    reference = tmp_path / "reference"
    reference.mkdir()
    run(flags([zipped], weights, reference))
    want = h5_arrays(reference / "processed" / FEATURES_FILE)  # float32
    data = tmp_path / "data"
    data.mkdir()
    processed = data / "processed"
    # assembled as float32 without a TSV, then asked again with --fp16 --tsv
    _killed_before_finish(monkeypatch, flags([zipped], weights, data, "--block-size", "2"))
    again = FakeDetector()
    messages = []
    run(flags([zipped], weights, data, "--block-size", "2", "--fp16", "--tsv"), again, messages.append)
    arrays = h5_arrays(processed / FEATURES_FILE)
    record = read_record(record_path(processed, "features"))
    assert again.images == 0 and arrays["features"].dtype == np.float16 and record["params"]["fp16"] is True
    np.testing.assert_array_equal(arrays["features"], want["features"].astype(np.float16))
    assert (processed / imf.TSV_NAME).read_bytes() == _tsv_of(want)  # float32, from the blocks
    assert features_problem(processed) is None and not (processed / imf.WORK_DIR).exists()
    assert any(m.endswith(f"and {processed / imf.TSV_NAME}") for m in messages)
    # and back: assembled as float16, finished as float32
    other = tmp_path / "other"
    other.mkdir()
    _killed_before_finish(monkeypatch, flags([zipped], weights, other, "--block-size", "2", "--fp16"))
    run(flags([zipped], weights, other, "--block-size", "2"), again)
    arrays = h5_arrays(other / "processed" / FEATURES_FILE)
    assert again.images == 0 and arrays["features"].dtype == np.float32
    assert read_record(record_path(other / "processed", "features"))["params"]["fp16"] is False
    np.testing.assert_array_equal(arrays["features"], want["features"])


def test_a_kill_while_assembling_again_is_assembled_by_the_next_run_without_force(tmp_path, weights, monkeypatch):
    zipped = coco_zip(tmp_path / "train2014.zip", [1, 2, 3], seed=12)
    data = tmp_path / "data"
    data.mkdir()
    processed = data / "processed"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # features.h5 and TSV moved into place, no record yet
        patch.setattr(imf, "make_record", killed)
        with pytest.raises(KeyboardInterrupt):
            run(flags([zipped], weights, data, "--tsv"))
    with monkeypatch.context() as patch:  # then killed while assembling again as float16
        patch.setattr(imf, "write_features_h5", killed)
        with pytest.raises(KeyboardInterrupt):
            run(flags([zipped], weights, data, "--tsv", "--fp16"))
    again = FakeDetector()
    run(flags([zipped], weights, data, "--tsv", "--fp16"), again)  # ours, not foreign: no --force needed
    arrays = h5_arrays(processed / FEATURES_FILE)
    assert again.images == 0 and arrays["features"].dtype == np.float16 and features_problem(processed) is None
    assert read_record(record_path(processed, "features"))["params"]["fp16"] is True
    assert not (processed / imf.WORK_DIR).exists()
    tsv = decode_row((processed / imf.TSV_NAME).read_bytes().split(b"\r\n")[0])
    np.testing.assert_array_equal(tsv.features.astype(np.float16), arrays["features"][0])


def test_a_tsv_that_is_not_the_recorded_one_is_written_again(tmp_path, weights):
    zipped = coco_zip(tmp_path / "train2014.zip", [4, 5], seed=10)
    data = tmp_path / "data"
    data.mkdir()
    processed = data / "processed"
    tsv_path = processed / imf.TSV_NAME
    run(flags([zipped], weights, data, "--tsv"))
    good = tsv_path.read_bytes()
    assert good == _tsv_of(h5_arrays(processed / FEATURES_FILE))
    for damaged in (b"something else\r\n", good[:-1] + b"X"):  # other size; same size, other bytes
        tsv_path.write_bytes(damaged)
        again = FakeDetector()
        messages = []
        run(flags([zipped], weights, data, "--tsv"), again, messages.append)
        assert again.images == 0 and tsv_path.read_bytes() == good
        assert any(m == f"wrote {tsv_path} from it" for m in messages)
    # a float16 features.h5 cannot give it: extracted again
    run(flags([zipped], weights, data, "--tsv", "--fp16", "--force"))
    tsv_path.write_bytes(b"damaged")
    again = FakeDetector()
    run(flags([zipped], weights, data, "--tsv", "--fp16"), again)
    assert again.images == 2 and tsv_path.read_bytes() == good
    messages = []
    run(flags([zipped], weights, data, "--tsv", "--fp16"), again, messages.append)
    assert again.images == 2 and any(m.startswith("skip:") for m in messages)


def test_a_foreign_file_at_the_tsv_path_is_not_replaced_without_force(tmp_path, weights):
    zipped = coco_zip(tmp_path / "train2014.zip", [6, 7], seed=11)
    data = tmp_path / "data"
    data.mkdir()
    foreign = tmp_path / "mine.tsv"
    foreign.write_bytes(b"not ours")
    for extra in ([], ["--fp16"]):  # no features.h5 yet; then with a current float32 one ...
        with pytest.raises(VQAError, match=r"^[^\n]*mine.tsv: already exists .* pass --force") as error:
            run(flags([zipped], weights, data, "--tsv", str(foreign), *extra))
        assert foreign.read_bytes() == b"not ours"
        run(flags([zipped], weights, data))
    processed = data / "processed"
    # ... which, up to date, used to skip the TSV because a file was there
    with pytest.raises(VQAError, match="mine.tsv: already exists"):
        run(flags([zipped], weights, data, "--tsv", str(foreign)))
    assert "\n" not in str(error.value)
    again = FakeDetector()
    run(flags([zipped], weights, data, "--tsv", str(foreign), "--force"), again)
    assert again.images == 0 and foreign.read_bytes() == _tsv_of(h5_arrays(processed / FEATURES_FILE))
    messages = []
    run(flags([zipped], weights, data, "--tsv", str(foreign)), again, messages.append)
    assert any(m.startswith("skip:") for m in messages)


def test_two_torchrun_ranks_write_the_file_of_one_process(tmp_path, weights):
    zipped = coco_zip(tmp_path / "train2014.zip", range(1, 12), seed=5)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    args = ["--block-size", "3", "--batch-size", "2"]
    run(flags([zipped], weights, one, *args))
    count = tmp_path / "count.txt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(FAKES), *flags([zipped], weights, two, *args), "--device", "cpu", "--no-progress"],
                          env=_env(FAKE_DETECTOR_COUNT=str(count), VQA_CP_COLLECTIVE_TIMEOUT="60"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "processed" / FEATURES_FILE).read_bytes() == (one / "processed" / FEATURES_FILE).read_bytes()
    assert sum(map(int, count.read_text().split())) == 11  # disjoint shares: every image once
    records = [read_record(record_path(d / "processed", "features")) for d in (one, two)]
    assert records[0]["params"] == records[1]["params"] and records[0]["inputs"] == records[1]["inputs"]


# ------------------------------------------------------------------------------------------ main.py on the result


@pytest.mark.slow
def test_main_trains_on_extracted_features(toy_data, tmp_path, weights):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    with h5py.File(data / "processed" / FEATURES_FILE, "r") as h5:
        ids = h5["image_id"][:].tolist()
    zipped = coco_zip(tmp_path / "train2014.zip", ids, seed=6)
    with pytest.raises(VQAError, match="made from a feature copy"):
        run(flags([zipped], weights, data))
    run(flags([zipped], weights, data, "--force", "--block-size", "64", "--batch-size", "16"))
    from tests.conftest import tiny_args
    from vqa_cp.training import main as train
    results = train(tiny_args(data, tmp_path / "run"))
    assert results["history"][-1]["epoch"] == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())


# ------------------------------------------------------------------------------------------ the real detector

# random weights, a small input and few proposals: seconds on a CPU
TINY_DETECTOR = {"MIN_SIZE_TEST": 96, "MAX_SIZE_TEST": 128, "PRE_NMS_TOPK_TEST": 200, "POST_NMS_TOPK_TEST": 40,
                 "POOLER_RESOLUTION": 7}


@pytest.fixture(scope="module")
def random_detector(tmp_path_factory) -> Path:
    from vqa_cp.extraction import write_random_detector
    return write_random_detector(tmp_path_factory.mktemp("detector"), seed=0, **TINY_DETECTOR)


def _detector_zip(path: Path) -> tuple[Path, dict[int, np.ndarray]]:
    rng = np.random.default_rng(8)
    # two images of two sizes in one batch (padded together); each new size costs the CPU kernels a warm-up
    images = {11: random_image(rng, 64, 48), 4: random_image(rng, 48, 64)}
    data = {i: jpeg_bytes(image) for i, image in images.items()}
    write_zip(path, {f"val2014/{coco_name(i, 'val2014')}": b for i, b in data.items()})
    return path, {i: decoded(b) for i, b in data.items()}


def _check_against_direct(h5_path: Path, images: dict[int, np.ndarray], detector, amp=None) -> None:
    """features.h5 rows equal the detector's results for one image at a time (batched = one at a time)."""
    arrays = h5_arrays(h5_path)
    assert arrays["image_id"].tolist() == sorted(images)
    assert arrays["features"].shape == (len(images), detector.num_boxes, detector.feature_dim)
    for row, image_id in enumerate(sorted(images)):
        image = images[image_id]
        want = detector.extract([image], select="caffe", amp=amp)[0]
        np.testing.assert_allclose(arrays["features"][row], want["features"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(arrays["boxes"][row], want["boxes"], rtol=1e-5, atol=1e-4)
        boxes = arrays["boxes"][row]
        h, w = image.shape[:2]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 3] <= h).all() and (boxes[:, :2] <= boxes[:, 2:]).all()
    assert np.isfinite(arrays["features"]).all()


def test_end_to_end_with_random_weights(tmp_path, random_detector):
    zipped, images = _detector_zip(tmp_path / "val2014.zip")
    data = tmp_path / "data"
    data.mkdir()
    loaded = []

    def load(folder, device):
        loaded.append(imf.load_detector(folder, device))  # the command's own loader
        return loaded[-1]

    imf.main(flags([zipped], random_detector, data, "--batch-size", "2", "--block-size", "2", "--device", "cpu",
                   "--no-progress"), make_detector=load, log=lambda message: None)
    processed = data / "processed"
    assert features_problem(processed) is None
    record = read_record(record_path(processed, "features"))
    assert record["params"]["select"] == "caffe" and record["params"]["amp"] == "none"
    _check_against_direct(processed / FEATURES_FILE, images, loaded[0])
    from vqa_cp.features import FeatureStore
    store = FeatureStore(processed / FEATURES_FILE)  # what training reads
    assert (len(store), store.num_boxes, store.dim) == (2, 36, 2048)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_extraction_matches_the_cpu(tmp_path, random_detector, amp):
    """On the GPU (bench/gpu_check.sh): the command with --device cuda against the CPU detector."""
    from bench.bench_extract_features import amp_effect
    from vqa_cp.extraction import BottomUpDetector
    zipped, images = _detector_zip(tmp_path / "val2014.zip")
    data = tmp_path / "data"
    data.mkdir()
    imf.main(flags([zipped], random_detector, data, "--batch-size", "2", "--device", "cuda", "--amp", amp,
                   "--num-workers", "2", "--no-progress"), log=lambda message: None)
    arrays = h5_arrays(data / "processed" / FEATURES_FILE)
    cpu = BottomUpDetector.from_pretrained(random_detector)
    want = [cpu.extract([images[i]], select="caffe")[0] for i in sorted(images)]
    got = [{"boxes": b, "features": f} for b, f in zip(arrays["boxes"], arrays["features"])]
    agreement = amp_effect(want, got)
    print(f"cuda {amp} against the CPU float32:", agreement)
    assert np.isfinite(arrays["features"]).all() and arrays["image_id"].tolist() == sorted(images)
    assert agreement["boxes_found_again"] >= 0.8 and agreement["cosine_mean"] >= (0.99 if amp == "none" else 0.9)


def test_the_command_line_front_ends_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "extract_features.py"), "--images",
                           str(tmp_path / "train2014.zip"), "--weights", str(tmp_path), "--data", str(tmp_path)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: image source not found: {tmp_path / 'train2014.zip'} (give a folder of " \
                                  "images or a zip such as train2014.zip)"
