"""download.sh --from: a local copy (folder, zip, tar.gz, single file) checked and put in place without touching
the user's files. vqa_cp.verify and vqa_cp.feature_forms belong to other helpers: stand-ins here."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from vqa_cp import copy_checks, download
from vqa_cp.errors import VQAError

CP = {f"vqacp_v2_{s}_{k}.json": json.dumps([{"question_id": i, "split": s, "kind": k} for i in range(3)]).encode()
      for s in ("train", "test") for k in ("questions", "annotations")}
GLOVE = b"the 0.1 0.2 0.3\nof -0.4 0.5 0.6\n"
V2_TRAIN = json.dumps({"questions": [{"question_id": 1}]}).encode()
V2_VAL = json.dumps({"questions": [{"question_id": 2}]}).encode()
HTML = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>\n"
TSV = b"9\t640\t480\t36\tYm94ZXM=\tZmVhdHVyZXM=\n"
ORIGINAL_TSV = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"


def common_layout() -> dict[str, bytes]:
    """A copy as people share it: sub-folders named after the release's zips, GloVe under data/glove/."""
    files = {f"cp_v2_{'questions' if 'questions' in n else 'annotations'}/{n}": b for n, b in CP.items()}
    files["data/glove/glove.6B.300d.txt"] = GLOVE
    files["v2_OpenEnded_mscoco_val2014_questions.json"] = V2_VAL
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file()}


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """verify_raw refuses a file holding b"BAD"; feature forms by suffix; every call recorded."""
    calls: list[tuple] = []

    def verify_raw(candidates: dict[str, Path], data_dir: Path, release: bool) -> SimpleNamespace:
        calls.append(("verify", sorted(candidates), release))
        refused = {k: "one question in both splits (first 7)" for k, p in candidates.items()
                   if b"BAD" in p.read_bytes()}
        notes = [] if release else [f"{len(candidates)} files: not the full release's counts"]
        return SimpleNamespace(refused=refused, notes=notes)

    def find_feature_files(root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.suffix in (".tsv", ".hdf5", ".pkl"))

    def identify_copy(paths: list[Path]) -> SimpleNamespace:
        calls.append(("identify", [p.name for p in paths]))
        if any(b"35 boxes" in p.read_bytes() for p in paths if p.is_file()):
            raise VQAError(f"{paths[0]}: row 1: 35 boxes, not 36")
        form = "tsv" if paths[0].suffix == ".tsv" else "hdf5_trainval36"
        return SimpleNamespace(form=form, files=paths)

    monkeypatch.setattr(copy_checks, "verify_raw", verify_raw)
    monkeypatch.setattr(copy_checks, "remember_notes", lambda data, verdict, files: calls.append(("remember",
                                                                                                 sorted(files))))
    monkeypatch.setattr(copy_checks, "find_feature_files", find_feature_files)
    monkeypatch.setattr(copy_checks, "identify_copy", identify_copy)
    monkeypatch.setattr(copy_checks, "check_features", lambda data: calls.append(("check_features", data)))
    return calls


def run(data: Path, *args: str) -> int:
    return download.main(["--data", str(data), *args], {})


def test_import_from_a_folder_links_and_leaves_the_copy_untouched(tmp_path: Path, stand_ins: list,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", common_layout())
    before = snapshot(copy)
    data = tmp_path / "data"
    assert run(data, "--from", str(copy)) == 0
    out, err = capsys.readouterr()
    for name, body in CP.items():
        assert (data / name).read_bytes() == body
        source = next(copy.rglob(name))
        assert (data / name).stat().st_ino == source.stat().st_ino  # a hard link: same file system
        assert f"imported {name} from {source}" in out
    assert (data / "glove" / "glove.6B.300d.txt").read_bytes() == GLOVE
    assert snapshot(copy) == before
    assert stand_ins[0] == ("verify", sorted([*CP, "glove/glove.6B.300d.txt",
                                              "v2_OpenEnded_mscoco_val2014_questions.json"]), False)
    assert stand_ins[1][0] == "remember" and "vqacp_v2_train_questions.json" in stand_ins[1][1]
    assert "note: 6 files: not the full release's counts" in err
    assert "still missing: v2_OpenEnded_mscoco_train2014_questions.json, " in out
    assert ORIGINAL_TSV in out.split("still missing:")[1]
    assert "summary: 6 imported, 0 already in place, 0 refused" in out
    assert not list(data.glob(".*"))

    # the same copy again: nothing replaced
    assert run(data, "--from", str(copy)) == 0
    assert "summary: 0 imported, 6 already in place, 0 refused" in capsys.readouterr().out


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel, body in files.items():
                zf.writestr(rel, body)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for rel, body in files.items():
                info = tarfile.TarInfo(rel)
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return path


@pytest.mark.parametrize("archive_name", ["vqa_cp_copy.zip", "vqa_cp_copy.tar.gz"])
def test_import_from_an_archive(archive_name: str, tmp_path: Path, stand_ins: list,
                                capsys: pytest.CaptureFixture[str]) -> None:
    files = {f"shared/{rel}": body for rel, body in common_layout().items()}
    files["shared/README.txt"] = b"not imported"
    archive = make_archive(tmp_path / archive_name, files)
    before = archive.read_bytes()
    data = tmp_path / "data"
    assert run(data, "--from", str(archive)) == 0
    out = capsys.readouterr().out
    assert (data / "vqacp_v2_test_annotations.json").read_bytes() == CP["vqacp_v2_test_annotations.json"]
    assert (data / "glove" / "glove.6B.300d.txt").read_bytes() == GLOVE
    assert f"imported glove/glove.6B.300d.txt from {archive}:shared/data/glove/glove.6B.300d.txt" in out
    assert archive.read_bytes() == before
    assert not list(data.glob(".import-*")) and not (data / "README.txt").exists()


def test_import_single_files_and_a_release_zip(tmp_path: Path, stand_ins: list,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", {"x/vqacp_v2_train_questions.json": CP["vqacp_v2_train_questions.json"]})
    glove_zip = make_archive(tmp_path / "glove.6B.zip", {"glove.6B.300d.txt": GLOVE, "glove.6B.50d.txt": GLOVE})
    (tmp_path / "dl").mkdir()
    v2_zip = make_archive(tmp_path / "dl" / "v2_Questions_Train_mscoco.zip",
                          {"v2_OpenEnded_mscoco_train2014_questions.json": V2_TRAIN})
    data = tmp_path / "data"
    args = ["--from", str(copy / "x" / "vqacp_v2_train_questions.json"), "--from", str(glove_zip), "--from",
            str(v2_zip)]
    assert run(data, *args) == 0
    out, err = capsys.readouterr()
    assert (data / "vqacp_v2_train_questions.json").read_bytes() == CP["vqacp_v2_train_questions.json"]
    assert (data / "glove" / "glove.6B.50d.txt").read_bytes() == GLOVE
    assert (data / "v2_OpenEnded_mscoco_train2014_questions.json").read_bytes() == V2_TRAIN
    assert glove_zip.is_file() and v2_zip.is_file()  # the user's zips stay
    assert f"{glove_zip}: {glove_zip.stat().st_size:,} bytes, not the release's 862,182,613 (kept" in err
    assert f"imported glove/glove.6B.300d.txt from {glove_zip}" in out


@pytest.mark.parametrize("archive_name", ["copy.zip", "copy.tar.gz"])
def test_truncated_archive_imports_nothing(archive_name: str, tmp_path: Path, stand_ins: list,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rng = bytes(range(256)) * 400  # incompressible enough that the cut falls inside the second member
    files = {"cp/vqacp_v2_train_questions.json": CP["vqacp_v2_train_questions.json"],
             "cp/vqacp_v2_test_questions.json": b"[" + json.dumps(rng.hex()).encode() + b"]"}
    archive = make_archive(tmp_path / archive_name, files)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    data = write_folder(tmp_path / "data", {"vqacp_v2_train_questions.json": b"[]"})
    assert run(data, "--from", str(archive)) == 1
    out, err = capsys.readouterr()
    (line,) = [e for e in err.splitlines() if e.startswith("error:")]
    assert line.startswith(f"error: {archive}: ") and "member cp/vqacp_v2_test_questions.json" in line
    assert line.endswith("nothing imported from it")
    assert sorted(p.name for p in data.iterdir()) == ["vqacp_v2_train_questions.json"]
    assert (data / "vqacp_v2_train_questions.json").read_bytes() == b"[]"
    assert "summary: 0 imported" in out


def test_html_page_named_like_a_json_is_refused(tmp_path: Path, stand_ins: list,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    files = common_layout()
    files["cp_v2_questions/vqacp_v2_test_questions.json"] = HTML
    files["cp_v2_annotations/vqacp_v2_test_annotations.json"] = b"BAD" + CP["vqacp_v2_test_annotations.json"]
    copy = write_folder(tmp_path / "copy", files)
    data = tmp_path / "data"
    assert run(data, "--from", str(copy)) == 1
    out, err = capsys.readouterr()
    assert (f"error: refused vqacp_v2_test_questions.json from {copy}/cp_v2_questions/vqacp_v2_test_questions.json:"
            " an HTML or XML page (an error page?), not the file") in err.splitlines()
    assert (f"error: refused vqacp_v2_test_annotations.json from {copy}/cp_v2_annotations/"
            "vqacp_v2_test_annotations.json: not JSON: it starts with b'BAD[{\"question_id\": '") in err.splitlines()
    assert not (data / "vqacp_v2_test_questions.json").exists()
    assert (data / "vqacp_v2_train_questions.json").is_file()
    assert "summary: 4 imported, 0 already in place, 2 refused" in out


def test_verify_refusal_keeps_the_file_out(tmp_path: Path, stand_ins: list, capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", {"vqacp_v2_train_questions.json": b'[{"BAD": 1}]'})
    data = tmp_path / "data"
    assert run(data, "--from", str(copy)) == 1
    assert "one question in both splits (first 7)" in capsys.readouterr().err
    assert not (data / "vqacp_v2_train_questions.json").exists()


def test_only_selects_with_from(tmp_path: Path, stand_ins: list, capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", common_layout())
    data = tmp_path / "data"
    assert run(data, "--only", "glove", "--from", str(copy)) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()) == [
        "glove/glove.6B.300d.txt"]
    assert "nothing missing for the selected groups" in out


def test_feature_copies_go_to_their_raw_places(tmp_path: Path, stand_ins: list,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", {"feats/trainval_36/some_name.tsv": TSV})
    hdf5 = make_archive(tmp_path / "hdf5_copy.tar.gz", {"data/trainval36.hdf5": b"\x89HDF\r\n",
                                                        "data/trainval36_imgid2idx.pkl": b"\x80\x02}q\x00."})
    data, data_b = tmp_path / "data", tmp_path / "data_b"
    assert run(data, "--only", "features", "--from", str(copy)) == 0
    out = capsys.readouterr().out
    assert run(data_b, "--only", "features", "--from", str(hdf5)) == 0
    out += capsys.readouterr().out
    assert (data / ORIGINAL_TSV).read_bytes() == TSV
    assert (data_b / "features" / "trainval36.hdf5").read_bytes() == b"\x89HDF\r\n"
    assert (data_b / "features" / "trainval36_imgid2idx.pkl").is_file()
    assert f"imported {ORIGINAL_TSV} (tsv) from {copy}/feats/trainval_36/some_name.tsv" in out
    assert f"imported features/trainval36.hdf5 (hdf5_trainval36) from {hdf5}:data/trainval36.hdf5" in out
    assert stand_ins.count(("check_features", data)) == 1 and stand_ins.count(("check_features", data_b)) == 1
    # both copies into one folder: the second is refused, not mixed with the first
    assert run(data, "--only", "features", "--from", str(hdf5)) == 1
    assert "another feature copy is in place (trainval_36/" in capsys.readouterr().err
    assert not (data / "features").exists()
    assert (copy / "feats/trainval_36/some_name.tsv").read_bytes() == TSV

    bad = write_folder(tmp_path / "bad", {"x.tsv": b"35 boxes"})
    assert run(tmp_path / "data2", "--only", "features", "--from", str(bad)) == 1
    assert f"error: refused features from {bad}: {bad}/x.tsv: row 1: 35 boxes, not 36" in capsys.readouterr().err
    assert not (tmp_path / "data2" / "trainval_36").exists()


def test_missing_source_and_unknown_file(tmp_path: Path, stand_ins: list, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert run(tmp_path / "data", "--from", str(tmp_path / "nowhere"), "--from", str(other)) == 1
    err = capsys.readouterr().err
    assert f"error: --from {tmp_path / 'nowhere'}: no such file or folder" in err
    assert f"error: --from {other}: not a file download.sh knows" in err
    assert os.listdir(tmp_path / "data") == []


def small_checkpoint() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"backbone.stem.conv1.weight": torch.zeros(2, 3)}, buffer)
    return buffer.getvalue()


def test_detector_folder_and_images_zip(tmp_path: Path, stand_ins: list, capsys: pytest.CaptureFixture[str]) -> None:
    weights = small_checkpoint()
    copy = write_folder(tmp_path / "copy", {"hub/frcnn-vg-finetuned/config.yaml": b"MODEL:\n  DEVICE: cpu\n",
                                            "hub/frcnn-vg-finetuned/pytorch_model.bin": weights,
                                            "elsewhere/config.yaml": b"not the detector's",
                                            "coco/val2014.zip": b"PK\x05\x06" + bytes(18)})
    data = tmp_path / "data"
    assert run(data, "--only", "detector,images", "--from", str(copy)) == 0
    out, err = capsys.readouterr()
    assert (data / "detector" / "config.yaml").read_bytes() == b"MODEL:\n  DEVICE: cpu\n"
    assert (data / "detector" / "pytorch_model.bin").read_bytes() == weights
    assert (data / "images" / "val2014.zip").is_file() and not (data / "images" / "train2014.zip").exists()
    assert f"{len(weights):,} bytes, not the release's 262,398,754 (kept: a copy may be a subset)" in err
    assert "still missing: images/train2014.zip" in out

    # a checkpoint or a zip cut short is no subset: refused, nothing placed
    cut = write_folder(tmp_path / "cut", {"hub/pytorch_model.bin": weights[: len(weights) // 2],
                                          "hub/config.yaml": b"MODEL:\n  DEVICE: cpu\n",
                                          "coco/train2014.zip": b"PK\x03\x04" + bytes(60)})
    data = tmp_path / "data_cut"
    assert run(data, "--only", "detector,images", "--from", str(cut)) == 1
    err = capsys.readouterr().err
    assert "refused pytorch_model.bin from" in err and "cut short" in err
    assert "refused train2014.zip from" in err and "a zip cut short (no central directory; 64 bytes)" in err
    assert not (data / "detector" / "pytorch_model.bin").exists() and not (data / "images").exists()


def test_copy_where_a_hard_link_is_refused(tmp_path: Path, stand_ins: list, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", {"vqacp_v2_train_questions.json": CP["vqacp_v2_train_questions.json"]})

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    data = tmp_path / "data"
    assert run(data, "--from", str(copy)) == 0
    placed, source = data / "vqacp_v2_train_questions.json", copy / "vqacp_v2_train_questions.json"
    assert placed.read_bytes() == source.read_bytes() and placed.stat().st_ino != source.stat().st_ino
    assert not list(data.glob(".*"))


def test_zip_member_failing_its_crc_is_named(tmp_path: Path, stand_ins: list,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    body = CP["vqacp_v2_test_questions.json"] * 50
    members = {"a/vqacp_v2_train_questions.json": CP["vqacp_v2_train_questions.json"],
               "b/vqacp_v2_test_questions.json": body}
    archive = make_archive(tmp_path / "copy.zip", members)
    raw = bytearray(archive.read_bytes())
    start = raw.index(b"b/vqacp_v2_test_questions.json") + 40  # inside the second member's compressed data
    raw[start] ^= 0xFF
    archive.write_bytes(bytes(raw))
    data = tmp_path / "data"
    assert run(data, "--from", str(archive)) == 1
    (line,) = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
    assert line.startswith(f"error: {archive}: cannot be read to the end at member b/vqacp_v2_test_questions.json")
    assert not data.exists() or not any(data.iterdir())


@pytest.mark.parametrize("word_length", range(1, 10))
def test_a_real_width_glove_line_passes_the_first_bytes_check(tmp_path: Path, word_length: int) -> None:
    # a 300-d line is ~2,700 bytes, longer than the bytes sniffed: the cut may fall anywhere in a number ("-", "-0.")
    line = "w" * word_length + "".join(f" -0.{i:05d}" for i in range(300)) + "\n"
    path = tmp_path / "glove.6B.300d.txt"
    path.write_text(line * 3)
    assert copy_checks.sniff_problem(path, "glove/glove.6B.300d.txt") is None
    path.write_text("<html><body>gone</body></html>\n")
    assert "HTML" in copy_checks.sniff_problem(path, "glove/glove.6B.300d.txt")
    path.write_text("w" + " 0.1 x0.2" * 150 + "\n")
    assert copy_checks.sniff_problem(path, "glove/glove.6B.300d.txt").startswith("not a GloVe text file")


def test_bad_data_folder_and_empty_copy_are_one_line_through_the_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    copy = write_folder(tmp_path / "copy", common_layout())
    afile = tmp_path / "afile"
    afile.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    script = Path(__file__).resolve().parents[1] / "tools" / "download.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script), "--data", str(afile), "--from", str(copy)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 1 and done.stderr == f"error: --data {afile} is a file, not a folder (choose another " \
                                                   "--data)\n", done.stderr
    done = subprocess.run(["bash", str(script), "--data", str(tmp_path / "data"), "--from", str(empty)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: --from {empty}: holds no file download.sh knows" in done.stderr
    assert "1 --from path(s) unreadable or empty" in done.stdout


def test_a_bad_json_in_place_is_moved_aside_and_replaced_by_the_copy(tmp_path: Path, stand_ins: list,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_folder(tmp_path / "copy", common_layout())
    data = tmp_path / "data"
    data.mkdir()
    (data / "vqacp_v2_train_questions.json").write_bytes(HTML)
    assert run(data, "--from", str(copy), "--only", "vqacp") == 0
    assert (data / "vqacp_v2_train_questions.json").read_bytes() == CP["vqacp_v2_train_questions.json"]
    assert (data / "vqacp_v2_train_questions.json.bad").read_bytes() == HTML
    assert "moved to vqacp_v2_train_questions.json.bad" in capsys.readouterr().err


def test_a_full_disk_while_copying_names_the_file_and_leaves_no_temporary(tmp_path: Path, stand_ins: list,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    copy = write_folder(tmp_path / "copy", common_layout())

    def no_link(src: object, dest: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(src: Path, dest: Path) -> None:
        dest.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(copy_checks, "copy_with_progress", full)
    data = tmp_path / "data"
    assert run(data, "--from", str(copy), "--only", "vqacp") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith(f"error: {data}/vqacp_v2_") and err[0].endswith(
        ": No space left on device"), err
    assert not [p for p in data.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
