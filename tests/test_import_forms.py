"""The whole import path with the real checks: a shared copy (folder, zip or tar.gz, common sub-folders) in every
feature form -> download.sh --from (vqa_cp.verify, vqa_cp.feature_forms) -> process.sh's steps -> the same
features.h5 arrays as the original TSV; a damaged VQA-CP copy is refused (nothing put in place) or reported."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from vqa_cp import copy_checks, download
from vqa_cp.errors import VQAError
from vqa_cp.feature_forms import FORMS
from vqa_cp.features import process_features
from vqa_cp.processing import process_answers, process_text, processed_dir
from vqa_cp.provenance import make_record
from vqa_cp.toy import ToyConfig, generate_toy_data

CONFIG = ToyConfig(seed=5, images=40, boxes=12, feature_dim=16, questions_per_image=2)
PACKING = {"tsv": "zip", "lxmert_tsv": "tar.gz", "hdf5_trainval36": "folder", "hdf5_split36": "zip", "npz": "tar.gz"}
CP_FILES = [f"vqacp_v2_{s}_{k}.json" for s in ("train", "test") for k in ("questions", "annotations")]


def quiet(_: str) -> None:
    pass


def shared_copy(generated: Path, root: Path) -> Path:
    """The generated raw files re-arranged as copies circulate: cp_v2_questions/, cp_v2_annotations/,
    data/glove/, vqa2/, the features under a folder of their own."""
    generated, copy = Path(generated), root / "vqa_cp_copy"
    for path in sorted(p for p in generated.rglob("*") if p.is_file()):
        rel = path.relative_to(generated)
        if rel.name.startswith("vqacp_v2_"):
            dest = Path("cp_v2_questions" if "questions" in rel.name else "cp_v2_annotations") / rel.name
        elif rel.parts[0] == "glove":
            dest = Path("data") / rel
        elif rel.name.startswith("v2_"):
            dest = Path("vqa2") / rel.name
        elif rel.parts[0] in ("features", "trainval_36"):
            dest = Path("bottom_up") / Path(*rel.parts[1:])
        else:
            continue
        (copy / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy / dest)
    return copy


def pack(folder: Path, how: str) -> Path:
    if how == "folder":
        return folder
    if how == "zip":
        out = folder.with_suffix(".zip")
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, path.relative_to(folder.parent))
        return out
    out = folder.parent / f"{folder.name}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return out


def features_arrays(data: Path) -> dict[str, np.ndarray]:
    with h5py.File(processed_dir(data) / "features.h5", "r") as h5:
        return {name: h5[name][:] for name in h5}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """features.h5 of the original TSV, processed in place (no import)."""
    data = generate_toy_data(tmp_path_factory.mktemp("reference") / "data", CONFIG, progress=False)["out_dir"]
    process_features(data, log=quiet, progress=False)
    return features_arrays(data)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_imports_and_processes_to_the_tsv_arrays(tmp_path: Path, reference: dict[str, np.ndarray],
                                                            form: str, capsys: pytest.CaptureFixture[str]) -> None:
    generated = generate_toy_data(tmp_path / "gen", CONFIG, progress=False, features_form=form)["out_dir"]
    source = pack(shared_copy(generated, tmp_path / "copy"), PACKING[form])
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(source)], {}) == 0
    out, err = capsys.readouterr()
    assert ", 0 refused" in out and "still missing" not in out, out
    assert f"({form})" in out or form == "tsv"
    assert "vqacp_v2_train_questions.json: 4" in err  # the subset's count is reported, not refused
    messages: list[str] = []
    process_text(data, log=quiet)
    process_answers(data, log=messages.append)
    process_features(data, log=messages.append, progress=False)
    assert any(f"from the {form} copy" in m for m in messages), messages
    got = features_arrays(data)
    names = ["features", "image_id"] if form == "hdf5_trainval36" else sorted(reference)
    for name in names:
        np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{form}: {name}")
    if form == "hdf5_trainval36":
        assert "boxes" not in got and "image_w" not in got  # this form has neither: features.h5 says so


@pytest.fixture()
def toy_copy(tmp_path: Path) -> Path:
    return shared_copy(generate_toy_data(tmp_path / "gen", CONFIG, progress=False)["out_dir"], tmp_path / "copy")


def _edit(path: Path, edit) -> None:
    entries = json.loads(path.read_text())
    edit(entries)
    path.write_text(json.dumps(entries))


def test_a_vqacp_copy_missing_a_question_is_refused_and_nothing_is_put_in_place(
        tmp_path: Path, toy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dropped = {}

    def drop(entries: list) -> None:
        dropped["id"] = entries.pop(3)["question_id"]

    _edit(toy_copy / "cp_v2_questions" / "vqacp_v2_test_questions.json", drop)
    _edit(toy_copy / "cp_v2_annotations" / "vqacp_v2_test_annotations.json",
          lambda entries: entries.remove(next(e for e in entries if e["question_id"] == dropped["id"])))
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(toy_copy), "--only", "vqa2,vqacp"], {}) == 1
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if line.startswith("error: refused vqacp_v2_")]
    assert len(refusals) == 4 and str(dropped["id"]) in err, err
    assert not any((data / name).exists() for name in CP_FILES)
    assert "error: refused v2_" not in err and (data / "v2_mscoco_val2014_annotations.json").is_file(), err  # kept


def test_a_changed_answer_is_imported_and_reported_by_process_sh(tmp_path: Path, toy_copy: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    changed = {}

    def change(entries: list) -> None:
        changed["id"] = entries[2]["question_id"]
        entries[2]["multiple_choice_answer"] = "purple elephant"

    _edit(toy_copy / "cp_v2_annotations" / "vqacp_v2_train_annotations.json", change)
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 0
    err = capsys.readouterr().err
    note = next(line for line in err.splitlines() if "multiple_choice_answer" in line)
    assert str(changed["id"]) in note and "vqacp_v2_train_annotations.json" in note
    assert all((data / name).is_file() for name in CP_FILES)
    messages: list[str] = []
    process_text(data, log=quiet)
    process_answers(data, log=messages.append)
    assert any("multiple_choice_answer" in m and str(changed["id"]) in m for m in messages), messages


def _tsv_rows(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_a_feature_row_with_a_box_missing_is_refused_at_import_and_nothing_is_placed(
        tmp_path: Path, toy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    tsv = toy_copy / "bottom_up" / "trainval_resnet101_faster_rcnn_genome_36.tsv"
    rows = _tsv_rows(tsv)
    fields = rows[30].rstrip(b"\r\n").split(b"\t")  # image_id, w, h, num_boxes, boxes, features
    k = int(fields[3])
    boxes = np.frombuffer(base64.b64decode(fields[4]), np.float32).reshape(k, 4)[:-1]
    feats = np.frombuffer(base64.b64decode(fields[5]), np.float32).reshape(k, -1)[:-1]
    fields[3:] = [str(k - 1).encode(), base64.b64encode(boxes.tobytes()), base64.b64encode(feats.tobytes())]
    rows[30] = b"\t".join(fields) + b"\r\n"
    tsv.write_bytes(b"".join(rows))
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 1
    err = capsys.readouterr().err
    refusal = next(line for line in err.splitlines() if line.startswith("error: refused features from"))
    assert f"image_id {int(fields[0])}" in refusal and f"features {k - 1} x" in refusal, refusal
    assert f"{tsv}: line 31" in refusal  # the copy's own file, not its removed place in DATA
    assert not (data / "trainval_36").exists()
    assert not (processed_dir(data) / "features.h5").exists()
    assert all((data / name).is_file() for name in CP_FILES)  # the json files of the copy are imported


def test_features_missing_an_image_the_questions_use_are_refused_at_import(
        tmp_path: Path, toy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv = toy_copy / "bottom_up" / "trainval_resnet101_faster_rcnn_genome_36.tsv"
    rows = _tsv_rows(tsv)
    dropped = int(rows[5].split(b"\t", 1)[0])
    tsv.write_bytes(b"".join(rows[:5] + rows[6:]))
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 1
    err = capsys.readouterr().err
    refusal = next(line for line in err.splitlines() if line.startswith("error: refused features from"))
    assert "1 images that" in refusal and str(dropped) in refusal, refusal
    assert not (data / "trainval_36" / "trainval_resnet101_faster_rcnn_genome_36.tsv").exists()


def test_a_second_feature_copy_is_not_mixed_with_the_one_in_place(tmp_path: Path, toy_copy: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 0
    before = (processed_dir(data) / "features.h5").read_bytes()
    other = generate_toy_data(tmp_path / "other", CONFIG, progress=False, features_form="hdf5_split36")["out_dir"]
    capsys.readouterr()
    assert download.main(["--data", str(data), "--from", str(Path(other) / "features")], {}) == 1
    err = capsys.readouterr().err
    assert "another feature copy is in place (trainval_36/" in err, err
    assert not (data / "features").exists()
    assert (processed_dir(data) / "features.h5").read_bytes() == before
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 0
    assert "already in place" in capsys.readouterr().err


def test_questions_that_arrive_after_the_features_are_checked_against_them(tmp_path: Path, toy_copy: Path) -> None:
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--only", "features", "--from", str(toy_copy)], {}) == 0
    process_features(data, log=quiet, progress=False)  # up to date: skipped
    questions = json.loads((toy_copy / "cp_v2_questions" / "vqacp_v2_test_questions.json").read_text())
    questions[0]["image_id"] = 999_999_999  # an image the features lack
    (data / "vqacp_v2_test_questions.json").write_text(json.dumps(questions))
    with pytest.raises(VQAError, match=r"1 images that vqacp_v2_test_questions.json uses have no features "
                                        r"\(first ids: 999999999\)"):
        process_features(data, log=quiet, progress=False)


def _break_row(tsv: Path, index: int) -> int:
    """Cut the last box out of row `index` (num_boxes and both base64 fields kept consistent); its image_id."""
    import base64

    rows = _tsv_rows(tsv)
    fields = rows[index].rstrip(b"\r\n").split(b"\t")
    k = int(fields[3])
    boxes = np.frombuffer(base64.b64decode(fields[4]), np.float32).reshape(k, 4)[:-1]
    feats = np.frombuffer(base64.b64decode(fields[5]), np.float32).reshape(k, -1)[:-1]
    fields[3:] = [str(k - 1).encode(), base64.b64encode(boxes.tobytes()), base64.b64encode(feats.tobytes())]
    rows[index] = b"\t".join(fields) + b"\r\n"
    tsv.write_bytes(b"".join(rows))
    return int(fields[0])


def test_an_interrupted_feature_import_leaves_nothing_unchecked(tmp_path: Path, toy_copy: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    tsv_name = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"
    source = toy_copy / "bottom_up" / Path(tsv_name).name
    data = tmp_path / "data"

    def interrupted(_: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(copy_checks, "check_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download.main(["--data", str(data), "--from", str(toy_copy)], {})
    assert not (data / tsv_name).exists()  # placed, then removed: no unchecked copy left
    monkeypatch.undo()

    # what a kill -9 leaves (the file placed, no check, no record), of a copy with a bad row: checked, refused, removed
    image_id = _break_row(source, 7)
    (data / tsv_name).parent.mkdir(parents=True, exist_ok=True)
    os.link(source, data / tsv_name)
    capsys.readouterr()
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 1
    assert f"image_id {image_id}" in capsys.readouterr().err
    assert not (data / tsv_name).exists() and source.is_file()


def test_a_copy_with_other_content_or_extracted_features_in_place_is_refused(
        tmp_path: Path, toy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv_name = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"
    source = toy_copy / "bottom_up" / Path(tsv_name).name
    data = tmp_path / "data"
    (data / tsv_name).parent.mkdir(parents=True)
    body = bytearray(source.read_bytes())
    body[-10] = ord("A") if body[-10] != ord("A") else ord("B")  # the same size, other bytes
    (data / tsv_name).write_bytes(bytes(body))
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 1
    assert f"another feature copy is in place ({tsv_name})" in capsys.readouterr().err
    assert (data / tsv_name).read_bytes() == bytes(body)

    (data / tsv_name).unlink()
    record = processed_dir(data) / ".records" / "features.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(make_record("features", {"form": "extracted"}, {}, {"features.h5": {}})))
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 1
    assert "processed/features.h5 holds features made by tools/extract_features.py" in capsys.readouterr().err
    assert not (data / tsv_name).exists()


def _truncate(path: Path, toy_copy: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path, toy_copy: Path) -> None:
    path.write_text("[]")


def _annotations(path: Path, toy_copy: Path) -> None:
    shutil.copyfile(toy_copy / "cp_v2_annotations" / "vqacp_v2_train_annotations.json", path)


@pytest.mark.parametrize("damage, why", [
    (_truncate, "not valid JSON (truncated or corrupt?): Input data was truncated"),
    (_empty, "no questions (an empty list)"),
    (_annotations, ": entry 0 (question_id ")])
def test_a_lone_broken_vqacp_questions_file_is_refused_then_a_good_copy_imports(
        tmp_path: Path, toy_copy: Path, capsys: pytest.CaptureFixture[str], damage, why: str) -> None:
    name = "vqacp_v2_train_questions.json"
    bad = tmp_path / "bad" / "jtrunc"
    bad.mkdir(parents=True)
    shutil.copyfile(toy_copy / "cp_v2_questions" / name, bad / name)
    damage(bad / name, toy_copy)
    data = tmp_path / "data"
    assert download.main(["--data", str(data), "--from", str(bad)], {}) == 1
    out, err = capsys.readouterr()
    refusals = [line for line in err.splitlines() if line.startswith(f"error: refused {name}")]
    assert len(refusals) == 1 and str(bad / name) in refusals[0] and why in refusals[0], err
    assert "imported" not in out.replace("0 imported", "") and not (data / name).exists(), out
    assert download.main(["--data", str(data), "--from", str(toy_copy)], {}) == 0
    out, err = capsys.readouterr()
    assert ", 0 refused" in out and "still missing" not in out, out + err
    assert all((data / n).is_file() for n in CP_FILES)
