"""Content checks of the raw json and GloVe files (vqa_cp.verify) on toy copies changed one entry at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_args
from vqa_cp import verify
from vqa_cp.errors import VQAError
from vqa_cp.processing import process_answers
from vqa_cp.toy import ToyConfig, generate_toy_data
from vqa_cp.training import main
from vqa_cp.verify import CP_ANNOTATIONS, CP_QUESTIONS, V2_ANNOTATIONS, V2_QUESTIONS

CP_FILES = [*CP_QUESTIONS.values(), *CP_ANNOTATIONS.values()]
V2_FILES = [*V2_QUESTIONS.values(), *V2_ANNOTATIONS.values()]
GLOVE = "glove/glove.6B.300d.txt"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A small toy copy in the raw formats: 120 images, 3 questions each, 40 of them in val2014."""
    out = tmp_path_factory.mktemp("verify") / "toy"
    generate_toy_data(out, ToyConfig(seed=5, images=120, boxes=12, feature_dim=16, questions_per_image=3,
                                     test_images=4), progress=False)
    return out


def read(path: Path):
    return json.loads(path.read_text())


def entries(data) -> list[dict]:
    """The entry list of a VQA-CP (bare list) or VQA v2 ({"questions"|"annotations": [...]}) file, in place."""
    if isinstance(data, list):
        return data
    return data["questions"] if "questions" in data else data["annotations"]


def place(toy: Path, folder: Path, names: list[str]) -> dict[str, Path]:
    """Copy the toy's `names` into `folder` (same sub-folders); {name: path}."""
    out = {}
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(toy / name, folder / name)
        out[name] = folder / name
    return out


def edit(path: Path, change) -> None:
    """Rewrite a json file after `change(entry list)`."""
    data = read(path)
    change(entries(data))
    path.write_text(json.dumps(data))


@pytest.fixture
def copy(toy, tmp_path) -> tuple[dict[str, Path], Path]:
    """VQA-CP candidates in an import folder, VQA v2 in place in DATA."""
    data = tmp_path / "data"
    place(toy, data, V2_FILES)
    return place(toy, tmp_path / "import", CP_FILES), data


def test_a_good_copy_passes_with_the_release_counts_as_notes(toy, tmp_path):
    names = [*CP_FILES, *V2_FILES, GLOVE]
    candidates = place(toy, tmp_path / "import", names)
    verdict = verify.verify_raw(candidates, tmp_path / "empty", release=False)
    assert verdict.refused == {}
    n_train = len(read(toy / CP_QUESTIONS["train"]))
    assert f"{CP_QUESTIONS['train']}: {n_train:,} questions: not the full release's 438,183" in verdict.notes
    assert f"{GLOVE}: {len((toy / GLOVE).read_text().splitlines())} lines: not the full release's 400,000" \
        in verdict.notes
    assert not [n for n in verdict.notes if "differ" in n or "skipped" in n]
    assert all("\n" not in n for n in verdict.notes)
    # a download is held to the release's counts
    refused = verify.verify_raw(candidates, tmp_path / "empty", release=True).refused
    assert set(refused) == set(names) - set(V2_ANNOTATIONS.values())
    assert refused[CP_ANNOTATIONS["test"]].startswith(f"{CP_QUESTIONS['test']}: ")


def test_one_question_dropped_is_refused_naming_it(copy, toy):
    candidates, data = copy
    dropped = []
    edit(candidates[CP_QUESTIONS["test"]], lambda e: dropped.append(e.pop(3)["question_id"]))

    def drop(e: list[dict]) -> None:
        e[:] = [a for a in e if a["question_id"] != dropped[0]]

    edit(candidates[CP_ANNOTATIONS["test"]], drop)
    verdict = verify.verify_raw(candidates, data, release=False)
    assert set(verdict.refused) == set(CP_FILES)
    reason = verdict.refused[CP_QUESTIONS["train"]]
    assert f"1 VQA v2 questions missing (question_id {dropped[0]})" in reason and "0 extra" in reason


def test_one_question_in_both_splits_is_refused(copy):
    candidates, data = copy
    train_q = entries(read(candidates[CP_QUESTIONS["train"]]))[0]
    train_a = next(a for a in entries(read(candidates[CP_ANNOTATIONS["train"]]))
                   if a["question_id"] == train_q["question_id"])
    edit(candidates[CP_QUESTIONS["test"]], lambda e: e.append(train_q))
    edit(candidates[CP_ANNOTATIONS["test"]], lambda e: e.append(train_a))
    reason = verify.verify_raw(candidates, data, release=False).refused[CP_ANNOTATIONS["train"]]
    assert reason == (f"{CP_QUESTIONS['train']} and {CP_QUESTIONS['test']} share 1 questions: "
                      f"question_id {train_q['question_id']} is in both splits")


def _move_one_to_test(candidates: dict[str, Path]) -> int:
    moved = {}

    def take(split: str, kind: dict[str, str]) -> None:
        def change(e: list[dict]) -> None:
            k = next(i for i, x in enumerate(e) if x["question_id"] == moved.setdefault("id", e[0]["question_id"]))
            moved[kind[split]] = e.pop(k)
        edit(candidates[kind[split]], change)

    take("train", CP_QUESTIONS)
    take("train", CP_ANNOTATIONS)
    edit(candidates[CP_QUESTIONS["test"]], lambda e: e.append(moved[CP_QUESTIONS["train"]]))
    edit(candidates[CP_ANNOTATIONS["test"]], lambda e: e.append(moved[CP_ANNOTATIONS["train"]]))
    return moved["id"]


def test_a_question_moved_between_splits_shows_only_against_the_release_split(copy, toy, monkeypatch):
    """VQA v2 cannot see a moved question (the union and every entry still agree); only the release's
    split can. The toy's own counts stand in for the release's (patched constants): the toy copy is then
    'a copy covering all the release's questions', as the real 658,111 would be."""
    candidates, data = copy
    toy_split = {s: len(read(toy / CP_QUESTIONS[s])) for s in ("train", "test")}
    monkeypatch.setattr(verify, "CP_RELEASE", toy_split)
    assert verify.verify_raw(candidates, data, release=True).refused == {}  # the unchanged toy is "the release"
    _move_one_to_test(candidates)
    verdict = verify.verify_raw(candidates, data, release=False)
    moved = f"{toy_split['train'] - 1:,} / {toy_split['test'] + 1:,} questions, but the release splits"
    assert set(verdict.refused) == set(CP_FILES) and moved in verdict.refused[CP_QUESTIONS["test"]]
    monkeypatch.undo()  # at its true size the toy is a subset: the move is then a legitimate re-split
    assert verify.verify_raw(candidates, data, release=False).refused == {}


def test_release_split_rule_at_the_real_counts():
    assert verify.release_split_problem({"train": 438_183, "test": 219_928}) is None
    assert verify.release_split_problem({"train": 4_000, "test": 2_000}) is None  # a subset: not this rule
    problem = verify.release_split_problem({"train": 438_182, "test": 219_929})
    assert "438,182 / 219,929 questions, but the release splits its 658,111 questions 438,183 / 219,928" in problem


@pytest.mark.parametrize("what", ["image_id", "coco_split"])
def test_image_id_or_coco_split_disagreeing_with_vqa_v2_is_refused(copy, what):
    candidates, data = copy
    first = entries(read(candidates[CP_QUESTIONS["test"]]))[0]
    qid, value = first["question_id"], first[what]
    new = value + 1 if what == "image_id" else {"train2014": "val2014", "val2014": "train2014"}[value]
    for name in (CP_QUESTIONS["test"], CP_ANNOTATIONS["test"]):  # the pair agrees: only VQA v2 can tell
        edit(candidates[name], lambda e: [x.__setitem__(what, new) for x in e if x["question_id"] == qid])
    reason = verify.verify_raw(candidates, data, release=False).refused[CP_QUESTIONS["train"]]
    assert reason.startswith(f"{CP_QUESTIONS['test']}: question_id {qid}: {what} {new}, but {value} in v2_")


def test_annotations_not_matching_their_questions_are_refused(copy, toy, tmp_path):
    candidates, data = copy
    lost = []
    edit(candidates[CP_ANNOTATIONS["test"]], lambda e: lost.append(e.pop(0)["question_id"]))
    reason = verify.verify_raw(candidates, data, release=False).refused[CP_QUESTIONS["test"]]
    assert reason == (f"{CP_ANNOTATIONS['test']} does not match {CP_QUESTIONS['test']}: 1 questions without an "
                      f"annotation (question_id {lost[0]}), 0 annotations without a question")
    # VQA v2 too: an annotation whose image_id is not its question's
    v2 = place(toy, tmp_path / "v2", [V2_QUESTIONS["val2014"], V2_ANNOTATIONS["val2014"]])
    edit(v2[V2_ANNOTATIONS["val2014"]], lambda e: e[1].__setitem__("image_id", 7))
    refused = verify.verify_raw(v2, tmp_path / "empty", release=False).refused
    assert set(refused) == set(v2) and ": image_id 7, but " in refused[V2_ANNOTATIONS["val2014"]]


def test_one_answer_changed_is_reported_naming_the_question(copy):
    candidates, data = copy
    changed = []

    def change(e: list[dict]) -> None:
        e[2]["answers"][0]["answer"] = "a changed answer"
        changed.append(e[2]["question_id"])

    edit(candidates[CP_ANNOTATIONS["train"]], change)
    verdict = verify.verify_raw(candidates, data, release=False)
    assert verdict.refused == {}
    assert (f"VQA-CP v2: 1 questions differ from their VQA v2 entry (answers 1); first: question_id {changed[0]} "
            f"field 'answers' in {CP_ANNOTATIONS['train']}") in verdict.notes


def test_an_html_page_named_like_the_json_is_refused_in_one_line(copy):
    candidates, data = copy
    candidates[CP_QUESTIONS["train"]].write_text("<!DOCTYPE html>\n<html><body>Service unavailable</body></html>")
    reason = verify.verify_raw(candidates, data, release=False).refused[CP_QUESTIONS["train"]]
    assert "\n" not in reason and reason == (f"{candidates[CP_QUESTIONS['train']]}: an HTML page (an error page "
                                             "saved under this name?), not JSON")


def test_without_vqa_v2_the_relation_is_skipped_in_one_line(copy, tmp_path):
    candidates, _ = copy
    verdict = verify.verify_raw(candidates, tmp_path / "no_v2", release=False)
    assert verdict.refused == {}
    skipped = [n for n in verdict.notes if "skipped" in n]
    assert len(skipped) == 1 and skipped[0].startswith("VQA-CP v2 not checked against VQA v2 (skipped): ")


def _glove(path: Path, lines: list[str]) -> dict[str, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return {GLOVE: path}


def _line(word: str, n: int = 300) -> str:
    return word + "".join(f" {0.001 * i - 0.1:.5f}" for i in range(n))


@pytest.mark.parametrize("release", [True, False])
@pytest.mark.parametrize("bad, why", [
    (_line("short", 299), "line 3: 299 numbers, expected 300"),
    (_line("x").replace(" 0.00100", " 0.0x100"), "line 3: byte b'x' in a number"),
    (_line("x").replace(" 0.00100", "  0.00100"), "line 3: an empty field"),
    (_line("") , "line 3: no word before the numbers"),
])
def test_a_malformed_glove_line_is_refused_by_its_number(tmp_path, release, bad, why):
    candidates = _glove(tmp_path / GLOVE, [_line("a"), _line("b"), bad, _line("c")])
    reason = verify.verify_raw(candidates, tmp_path, release=release).refused[GLOVE]
    assert reason.startswith(f"{tmp_path / GLOVE}: {why}")


def test_glove_width_count_and_chunks(tmp_path, monkeypatch):
    narrow = _glove(tmp_path / "a" / GLOVE, [_line(f"w{i}", 100) for i in range(5)])
    assert verify.verify_raw(narrow, tmp_path, release=False).refused[GLOVE].endswith(
        "line 1: 100 numbers, expected 300")
    good = _glove(tmp_path / "b" / GLOVE, [_line(f"w{i}") for i in range(50)])
    verdict = verify.verify_raw(good, tmp_path, release=False)
    assert verdict.refused == {} and verdict.notes == [f"{GLOVE}: 50 lines: not the full release's 400,000"]
    assert verify.verify_raw(good, tmp_path, release=True).refused[GLOVE] == verdict.notes[0]
    # lines cut across read blocks, and a last line without its newline, count the same
    monkeypatch.setattr(verify, "GLOVE_CHUNK", 1000)
    good[GLOVE].write_text(good[GLOVE].read_text()[:-1])
    assert verify.glove_lines(good[GLOVE], 300) == 50
    bad = _glove(tmp_path / "c" / GLOVE, [_line(f"w{i}") for i in range(40)] + [_line("z", 7)])
    assert verify.verify_raw(bad, tmp_path, release=False).refused[GLOVE].endswith("line 41: 7 numbers, expected 300")


# ------------------------------------------------------------------------------- notes, remembered


def _log() -> tuple[list[str], callable]:
    lines: list[str] = []
    return lines, lines.append


def test_notes_are_repeated_while_their_files_are_unchanged(copy, toy):
    candidates, data = copy
    place(toy, data, CP_FILES)  # the copy is put in place
    verdict = verify.verify_raw(candidates, data, release=False)
    verify.remember(data, verdict, {n: data / n for n in candidates})
    lines, log = _log()
    assert verify.repeat_notes(data, log) == verdict.notes and len(lines) == 2
    assert lines[0] == f"note (data check): {verdict.notes[0]}"
    # the train files re-serialised: same entries, new bytes -> the train note no longer applies
    path = data / CP_QUESTIONS["train"]
    path.write_text(json.dumps(read(path), indent=1))
    assert verify.repeat_notes(data, log) == [n for n in verdict.notes if n.startswith(CP_QUESTIONS["test"])]


def test_process_answers_repeats_the_notes_and_main_prints_them(toy_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    names = [*CP_FILES, V2_QUESTIONS["train2014"], V2_QUESTIONS["val2014"], *V2_ANNOTATIONS.values()]
    verdict = verify.verify_raw({n: data / n for n in CP_FILES}, data, release=False)
    assert verdict.refused == {} and len(verdict.notes) == 2
    verify.remember(data, verdict, {n: data / n for n in names})
    lines, log = _log()
    process_answers(data, log=log)
    assert [line for line in lines if line.startswith("note")] == [f"note (data check): {n}" for n in verdict.notes]

    main(tiny_args(data, tmp_path / "run"))
    log_txt = (tmp_path / "run" / "log.txt").read_text()
    assert all(f"note (data check): {n}" in log_txt for n in verdict.notes)

    path = data / CP_QUESTIONS["test"]
    path.write_text(json.dumps(read(path), indent=1))  # changed bytes: the test note is dropped
    lines.clear()
    process_answers(data, log=log)
    assert [line for line in lines if line.startswith("note")] == [f"note (data check): {verdict.notes[0]}"]


def test_a_check_skipped_for_lack_of_vqa_v2_runs_once_it_is_in_place(toy, tmp_path):
    data = tmp_path / "data"
    place(toy, data, CP_FILES)
    verdict = verify.verify_raw({n: data / n for n in CP_FILES}, data, release=False)
    verify.remember(data, verdict, {n: data / n for n in CP_FILES})
    lines, log = _log()
    verify.check_pending(data, log)  # VQA v2 still missing: nothing runs, the skipped line is repeated
    assert lines == [] and any("skipped" in n for n in verify.repeat_notes(data, log))
    place(toy, data, V2_FILES)
    verify.check_pending(data, log)
    assert lines[-1] == f"checked {', '.join(CP_FILES)}: 2 notes"
    assert not any("skipped" in n for n in verify.repeat_notes(data, log))


def test_a_skipped_check_that_fails_later_refuses_processing(toy, tmp_path):
    data = tmp_path / "data"
    place(toy, data, CP_FILES)
    edit(data / CP_ANNOTATIONS["train"], lambda e: e[0].__setitem__("image_id", 1))
    edit(data / CP_QUESTIONS["train"], lambda e: e[0].__setitem__("image_id", 1))
    verdict = verify.verify_raw({n: data / n for n in CP_FILES}, data, release=False)
    assert verdict.refused == {}
    verify.remember(data, verdict, {n: data / n for n in CP_FILES})
    place(toy, data, V2_FILES)
    with pytest.raises(VQAError, match=r"vqacp_v2_train_questions.json fails its check: .*image_id 1, but"):
        process_answers(data, log=lambda line: None)
    assert not (data / "processed" / "cp").exists()


def test_notes_of_later_imports_join_the_earlier_ones_without_repeats(copy, toy):
    candidates, data = copy
    place(toy, data, CP_FILES)
    first = verify.verify_raw(candidates, data, release=False)
    verify.remember(data, first, candidates)
    v2 = place(toy, data.parent / "import_v2", V2_FILES)
    second = verify.verify_raw(v2, data, release=False)  # VQA-CP in place is checked against the new VQA v2
    assert second.refused == {} and set(first.notes) <= set(second.notes)
    verify.remember(data, second, v2)
    shown = verify.repeat_notes(data, lambda line: None)
    assert sorted(shown) == sorted(second.notes) and len(shown) == 2 + 4


def test_a_vqacp_entry_without_coco_split_is_refused(copy):
    candidates, data = copy
    qid = []
    edit(candidates[CP_QUESTIONS["train"]], lambda e: qid.append(e[4].pop("coco_split") and e[4]["question_id"]))
    reason = verify.verify_raw(candidates, data, release=False).refused[CP_ANNOTATIONS["test"]]
    assert reason.endswith(f": entry 4 (question_id {qid[0]}): missing field 'coco_split' (expected train2014 or "
                           "val2014)")


def test_other_glove_widths_are_checked_at_their_own_width(tmp_path):
    name = "glove/glove.6B.50d.txt"
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(_line("a", 50) + "\n" + _line("b", 300) + "\n")
    refused = verify.verify_raw({name: tmp_path / name}, tmp_path, release=False).refused
    assert refused[name].endswith("line 2: 300 numbers, expected 50")


def test_process_sh_repeats_the_notes(toy_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    verdict = verify.verify_raw({n: data / n for n in CP_FILES}, data, release=False)
    verify.remember(data, verdict, {n: data / n for n in CP_FILES})
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "tools" / "process.sh"), "--data", str(data)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("note (data check)")] == [
        f"note (data check): {n}" for n in verdict.notes]


def test_a_repeated_question_id_or_a_missing_candidate_is_refused(toy, tmp_path):
    v2 = place(toy, tmp_path / "v2", [V2_QUESTIONS["test2015"]])
    edit(v2[V2_QUESTIONS["test2015"]], lambda e: e.append(dict(e[0])))
    qid = entries(read(v2[V2_QUESTIONS["test2015"]]))[0]["question_id"]
    gone = {GLOVE: tmp_path / "nowhere.txt"}
    refused = verify.verify_raw({**v2, **gone}, tmp_path / "empty", release=False).refused
    assert refused == {V2_QUESTIONS["test2015"]: f"{v2[V2_QUESTIONS['test2015']]}: question_id {qid} occurs 2 times",
                       GLOVE: f"{tmp_path / 'nowhere.txt'}: not found (or not a file)"}


# ------------------------------------------------------------------- VQA-CP fails against VQA v2: who is refused


def _drop_a_test_question(files: dict[str, Path]) -> int:
    """Remove one question (and its annotation) from the VQA-CP test split; its question_id."""
    dropped = []
    edit(files[CP_QUESTIONS["test"]], lambda e: dropped.append(e.pop(3)["question_id"]))
    edit(files[CP_ANNOTATIONS["test"]], lambda e: e.remove(next(a for a in e if a["question_id"] == dropped[0])))
    return dropped[0]


def test_good_vqa_v2_is_kept_when_the_vqacp_copy_in_place_fails_against_it(toy, tmp_path):
    data = tmp_path / "data"
    dropped = _drop_a_test_question(place(toy, data, CP_FILES))  # the bad VQA-CP copy is already in place
    v2 = place(toy, tmp_path / "download", V2_FILES)
    verdict = verify.verify_raw(v2, data, release=False)
    assert verdict.refused == {}  # VQA v2 passes its own checks: kept
    failed = [n for n in verdict.notes if "fails its check" in n]
    assert len(failed) == 1 and "\n" not in failed[0]
    assert failed[0].startswith("VQA-CP v2 in place fails its check against VQA v2 (")
    assert f"1 VQA v2 questions missing (question_id {dropped})" in failed[0]
    place(toy, data, V2_FILES)  # download.sh puts VQA v2 in place and remembers the notes
    verify.remember(data, verdict, {n: data / n for n in V2_FILES})
    with pytest.raises(VQAError) as caught:
        process_answers(data, log=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{data / CP_QUESTIONS['train']} fails its check: VQA-CP v2 (")
    assert f"is not a re-split of VQA v2 train2014 + val2014: 1 VQA v2 questions missing (question_id {dropped})" \
        in message
    assert not (data / "processed" / "cp").exists()


def test_both_candidates_and_the_relation_fails_only_vqacp_is_refused(toy, tmp_path):
    candidates = place(toy, tmp_path / "import", [*CP_FILES, *V2_FILES])
    dropped = _drop_a_test_question(candidates)
    refused = verify.verify_raw(candidates, tmp_path / "empty", release=False).refused
    assert set(refused) == set(CP_FILES) and f"(question_id {dropped})" in refused[CP_QUESTIONS["test"]]
    # VQA v2 failing its own check is refused alone; VQA-CP waits for a good VQA v2 (the relation is skipped)
    good = place(toy, tmp_path / "good", [*CP_FILES, *V2_FILES])
    edit(good[V2_ANNOTATIONS["val2014"]], lambda e: e[1].__setitem__("image_id", 7))
    verdict = verify.verify_raw(good, tmp_path / "empty", release=False)
    assert set(verdict.refused) == {V2_QUESTIONS["val2014"], V2_ANNOTATIONS["val2014"]}
    skipped = [n for n in verdict.notes if "skipped" in n]
    assert len(skipped) == 1 and verdict.waits_for[skipped[0]] == (V2_QUESTIONS["val2014"], V2_ANNOTATIONS["val2014"])


# ------------------------------------------------------------------- every candidate parsed, whatever is missing


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_text("[]")


def _annotations_of(toy: Path, name: str):
    """Writes the toy's annotations of the same split (VQA-CP or VQA v2) under the questions file's name."""
    pairs = {**{CP_QUESTIONS[s]: CP_ANNOTATIONS[s] for s in CP_QUESTIONS},
             **{V2_QUESTIONS[s]: V2_ANNOTATIONS[s] for s in V2_ANNOTATIONS}}
    return lambda path: shutil.copyfile(toy / pairs[name], path)


BROKEN = {"truncated": (_half, "not valid JSON (truncated or corrupt?): Input data was truncated"),
          "empty": (_empty, "no questions (an empty list)"),
          "annotations": (None, "missing field 'question'")}


@pytest.mark.parametrize("release", [False, True])
@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("name", [CP_QUESTIONS["train"], V2_QUESTIONS["val2014"]])
def test_a_lone_broken_questions_file_is_refused_without_the_rest(toy, tmp_path, name, case, release):
    candidates = place(toy, tmp_path / "import", [name])
    change, why = BROKEN[case]
    (change or _annotations_of(toy, name))(candidates[name])
    if name.startswith("v2_"):  # wrapped: {"questions": [...]}
        if case == "empty":
            candidates[name].write_text('{"questions": []}')
        why = why if case != "annotations" else "object missing required field questions"
    verdict = verify.verify_raw(candidates, tmp_path / "empty", release=release)
    reason = verdict.refused[name]
    assert reason.startswith(f"{candidates[name]}: ") and why in reason and "\n" not in reason, reason
    if case == "annotations" and name in CP_FILES:
        assert ": entry 0 (question_id " in reason
    assert list(verdict.refused) == [name] and not any("skipped" in n for n in verdict.notes), verdict.notes


def test_a_lone_truncated_annotations_file_is_refused(toy, tmp_path):
    for name in (CP_ANNOTATIONS["test"], V2_ANNOTATIONS["train2014"]):
        candidates = place(toy, tmp_path / "import", [name])
        _half(candidates[name])
        assert "Input data was truncated" in verify.verify_raw(candidates, tmp_path / "empty", False).refused[name]


def test_one_broken_vqacp_file_refuses_the_other_vqacp_candidates_with_its_reason(toy, tmp_path):
    candidates = place(toy, tmp_path / "import", [CP_QUESTIONS["train"], CP_ANNOTATIONS["train"]])
    _empty(candidates[CP_ANNOTATIONS["train"]])
    refused = verify.verify_raw(candidates, tmp_path / "empty", release=False).refused
    assert set(refused.values()) == {f"{candidates[CP_ANNOTATIONS['train']]}: no annotations (an empty list): a "
                                     "split without annotations is not a copy of it"}
    assert set(refused) == set(candidates)


def test_a_full_check_parses_each_file_once(copy, monkeypatch):
    candidates, data = copy
    parsed: list[str] = []
    for loader in ("load_questions", "load_annotations"):
        real = getattr(verify.raw, loader)
        monkeypatch.setattr(verify.raw, loader,
                            lambda path, *a, _real=real, **k: parsed.append(Path(path).name) or _real(path, *a, **k))
    verdict = verify.verify_raw(candidates, data, release=False)
    assert verdict.refused == {}
    expected = CP_FILES + [V2_QUESTIONS["train2014"], V2_QUESTIONS["val2014"], *V2_ANNOTATIONS.values()]
    assert sorted(parsed) == sorted(Path(n).name for n in expected)
