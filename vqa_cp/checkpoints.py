"""Checkpoints: save atomically, load safely, resume exactly, and read the reference format.

Our checkpoint is one dict (torchvision style): model, loss_fn, optimizer, epoch, step, args,
random-number-generator states and digests of the vocabulary and answer list. Every load goes
through ``torch.load(weights_only=True)``: a checkpoint that holds anything but tensors and plain
containers is refused before any of it runs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import random
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqa_cp.errors import VQAError
from vqa_cp.files import atomic_path, load_json

CHECKPOINT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_e(\d+)_s(\d+)\.pth$")
# Keys of the reference checkpoints that our model does not have.
DEAD_KEY_PREFIXES = ("bias_lin.", "debias_loss_fn.")


def digest(items: list[str]) -> str:
    """SHA-256 of a word or answer list, to match a checkpoint against processed data."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random-number-generator state a training run draws from, weights_only-loadable."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash leaves the previous file or none, never half a file."""
    if type(checkpoint) is not dict:  # a CheckpointDict read back: weights_only loads only plain containers
        checkpoint = dict(checkpoint)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


# What torch.load(weights_only=True) raises on a file that is not a checkpoint (random bytes, an HTML page,
# a cut-off or damaged one). Only torch's restricted unpickler and zip reader run on the bytes, and they fail
# with whatever the garbage happens to spell: a bad opcode, a pop from an empty stack, a missing memo key, a
# rebuild function called with the wrong arguments. Anything else (MemoryError, NameError, ...) is not caught.
CORRUPT_FILE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, IndexError, KeyError,
    TypeError, AttributeError, AssertionError, struct.error, OverflowError,
)


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for a one-line error."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def safe_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; a refused, unreadable or corrupt file is a VQAError naming it."""
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"checkpoint not found: {path}")
    try:
        f = open(path, "rb")  # a file we cannot open is a read error, not a corrupt checkpoint
    except OSError as exc:
        raise VQAError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise VQAError(f"{path}: unreadable or truncated checkpoint (the file is empty)")
        try:
            with warnings.catch_warnings():  # garbage spells odd protocol numbers, and torch warns about each
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _REFUSED_GLOBAL.search(str(exc))
            if found is None or not _spells_global(f, found.group(1)):
                raise VQAError(f"{path}: unreadable or truncated checkpoint (not a PyTorch file: "
                               f"{_unpickler_detail(exc)})") from None
            raise VQAError(
                f"{path}: refused to load: the file holds an object of type {found.group(1)}, which could run "
                "code when unpickled (only tensors, numbers, strings and plain containers are accepted)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EIO:  # the disk, not the bytes
                raise VQAError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None
            # a cut-off zip makes the reader seek outside the file (EINVAL)
            raise VQAError(f"{path}: unreadable or truncated checkpoint ({_first_line(exc)})") from None
        except CORRUPT_FILE_ERRORS as exc:
            raise VQAError(f"{path}: unreadable or truncated checkpoint ({_first_line(exc)})") from None


# torch's words for a global that weights_only refuses; a dotted identifier, not what random bytes spell
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*) (?:was not an allowed|whose module)")


def _spells_global(f: io.BufferedReader, full_path: str) -> bool:
    """Whether the file holds a whole GLOBAL opcode (`c module\\n name\\n`) for `full_path`: a refused name
    that a cut or damaged file only half-spells ("torch.LongSto") is corruption, not a foreign object."""
    f.seek(0)
    data = f.read()
    spellings = [(full_path[:i], full_path[i + 1:]) for i, char in enumerate(full_path) if char == "."]
    spellings += [("builtins", full_path), ("__builtin__", full_path)]  # torch drops the builtins prefix
    return any(f"c{module}\n{name}\n".encode() in data for module, name in spellings)


def _unpickler_detail(exc: pickle.UnpicklingError) -> str:
    """The unpickler's own reason, without torch's long advice about weights_only."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    text = text.strip().splitlines()[0].strip() if text.strip() else "UnpicklingError"
    return text[:157] + "..." if len(text) > 160 else text


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a training folder, newest (highest epoch, step) first."""
    found = []
    for p in Path(output_dir).glob("checkpoint_e*_s*.pth"):
        m = CHECKPOINT_PATTERN.match(p.name)
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_name(epoch: int, step: int) -> str:
    """File name of the checkpoint taken after `step` steps of epoch `epoch` (0-based)."""
    return f"checkpoint_e{epoch:03d}_s{step:07d}.pth"


def load_newest_checkpoint(output_dir: str | os.PathLike, run_id: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint of a folder; a truncated newer one is skipped with a warning, and so is
    one of another run than `run_id` (when given)."""
    candidates = list_checkpoints(output_dir)
    if not candidates:
        raise VQAError(f"--resume {output_dir}: no checkpoint_e*_s*.pth in that folder (a run that stopped "
                       "before its first checkpoint has nothing to continue: start it anew with --overwrite)")
    for path in candidates:
        try:
            ckpt = safe_load(path)
        except VQAError as exc:
            warnings.warn(f"skipping {path.name}: {exc}; trying the previous checkpoint", stacklevel=2)
            continue
        if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
            warnings.warn(f"skipping {path.name}: not a vqa_cp training checkpoint", stacklevel=2)
            continue
        if run_id is not None and ckpt.get("run_id") != run_id:
            warnings.warn(f"skipping {path.name}: written by another run than the one run.json names", stacklevel=2)
            continue
        problem = training_checkpoint_problem(ckpt)
        if problem is not None:
            warnings.warn(f"skipping {path.name}: {problem}; trying the previous checkpoint", stacklevel=2)
            continue
        return path, CheckpointDict(path, ckpt)
    raise VQAError(f"--resume {output_dir}: every checkpoint there is unreadable or truncated")


# What --resume reads from a training checkpoint, and the type each entry must have.
TRAINING_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "loss_fn": dict, "optimizer": dict, "epoch": int, "step": int, "args": dict, "rng": dict,
}


class CheckpointDict(dict):
    """A loaded checkpoint that names its file when code asks for an entry it lacks (one-line VQAError
    instead of a KeyError traceback deep in the training loop)."""

    def __init__(self, path: Path, entries: dict[str, Any]) -> None:
        super().__init__(entries)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise VQAError(f"{self.path}: the checkpoint lacks {key!r} (not a complete vqa_cp training checkpoint)")


def training_checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What makes `ckpt` unusable for --resume (a mistyped entry, a model that is not a state_dict), or None.

    Missing entries are reported when asked for (CheckpointDict): a run may not need every one.
    """
    for key, kind in TRAINING_KEYS.items():
        if key not in ckpt:
            continue
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            return f"the checkpoint's {key!r} holds a {type(ckpt[key]).__name__}, expected {_kind_name(kind)}"
    for key in ("epoch", "step"):
        if key in ckpt and ckpt[key] < 0:
            return f"the checkpoint's {key!r} is negative ({ckpt[key]})"
    return _state_dict_problem(ckpt["model"], "'model'") if "model" in ckpt else None


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _state_dict_problem(state: Any, what: str) -> str | None:
    """Why `state` is not a state_dict (string keys, tensor values), or None."""
    if not isinstance(state, dict):
        return f"the checkpoint's {what} is a {type(state).__name__}, not a state_dict"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"the checkpoint's {what} has a non-string key {key!r}"
        if not isinstance(value, torch.Tensor):
            return f"the checkpoint's {what} key {key!r} holds a {type(value).__name__}, not a tensor"
    return None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints (the previous one survives a crash while writing the next)."""
    for path in list_checkpoints(output_dir)[keep:]:
        path.unlink()


# --------------------------------------------------------------------------------------------
# Reference (published) checkpoints and word / answer lists


class _PlainUnpickler(pickle.Unpickler):
    """Admits only plain containers, strings and numbers: any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}")


def load_plain_pickle(path: str | os.PathLike, what: str) -> Any:
    """Read a pickle of plain lists / dicts / strings / numbers (the reference pipeline's lists)."""
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise VQAError(f"{path}: refused: the pickle holds {exc}, not only plain lists, dicts, strings "
                       "and numbers") from None
    except (EOFError, ValueError, IndexError) as exc:
        raise VQAError(f"{path}: unreadable or truncated pickle ({exc})") from None


def _json_list(path: str | os.PathLike, key: str, what: str) -> list:
    """The list under `key` of a JSON object file (our dictionary.json / answers.json)."""
    data = load_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise VQAError(f"{path}: expected {{\"{key}\": [...]}}")
    return data[key]


def read_reference_words(path: str | os.PathLike) -> list[str]:
    """Words of a reference dictionary.pkl ([word2idx, idx2word]) or of our dictionary.json."""
    if str(path).endswith(".json"):
        words = _json_list(path, "words", "dictionary file")
    else:
        obj = load_plain_pickle(path, "dictionary file")
        if isinstance(obj, list | tuple) and len(obj) == 2 and isinstance(obj[1], list):
            words = obj[1]
        elif isinstance(obj, dict):
            words = [w for w, _ in sorted(obj.items(), key=lambda kv: kv[1])]
        else:
            raise VQAError(f"{path}: expected [word2idx, idx2word] or a word->id dict")
    if not all(isinstance(w, str) for w in words):
        raise VQAError(f"{path}: the word list holds non-strings")
    return list(words)


def read_reference_answers(path: str | os.PathLike) -> list[str]:
    """Answers of a reference trainval_label2ans.pkl (list) / ans2label.pkl (dict) or our answers.json."""
    if str(path).endswith(".json"):
        answers = _json_list(path, "answers", "answers file")
    else:
        obj = load_plain_pickle(path, "answers file")
        if isinstance(obj, dict):
            answers = [a for a, _ in sorted(obj.items(), key=lambda kv: kv[1])]
        elif isinstance(obj, list):
            answers = obj
        else:
            raise VQAError(f"{path}: expected a label->answer list or an answer->label dict")
    if not all(isinstance(a, str) for a in answers):
        raise VQAError(f"{path}: the answer list holds non-strings")
    return list(answers)


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint file, sizes read from the tensors."""

    model: torch.nn.Module
    source: str  # "vqa_cp" or "reference"
    checkpoint: dict[str, Any] | None  # our full checkpoint dict, None for a reference state_dict


def _strip_reference(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop a DataParallel `module.` prefix and the reference's dead keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(DEAD_KEY_PREFIXES):
            continue
        out[key] = value
    return out


def load_model(path: str | os.PathLike, words: list[str] | None = None, answers: list[str] | None = None,
               model_name: str | None = None) -> LoadedModel:
    """Rebuild a model from our checkpoint dict, our model.pth or a reference-format state_dict.

    `words` / `answers` are the processed data's lists; when given they are checked against the
    checkpoint (digests for ours; vocabulary and answer counts for a reference state_dict).
    """
    from vqa_cp.model import build_model_from_state_dict, from_reference_state_dict

    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise VQAError(f"{path}: expected a state_dict or a checkpoint dict, found {type(obj).__name__}")
    if obj.get("version") == CHECKPOINT_VERSION and "model" in obj:
        problem = _state_dict_problem(obj["model"], "'model'")
        if problem is not None:
            raise VQAError(f"{path}: {problem}")
        state, source, ckpt = obj["model"], "vqa_cp", obj
    else:
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise VQAError(f"{path}: not a state_dict: key {bad[0]!r} holds a {type(obj[bad[0]]).__name__}")
        if not obj:
            raise VQAError(f"{path}: not a state_dict: the dict is empty")
        state, source, ckpt = from_reference_state_dict(_strip_reference(obj)), "reference", None
    try:
        model = build_model_from_state_dict(state, name=model_name)
    except VQAError as exc:
        raise VQAError(f"{path}: {exc}") from None
    except RuntimeError as exc:  # tensor shapes that disagree with each other
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3]) or str(exc)
        raise VQAError(f"{path}: the tensors' shapes disagree with each other: {detail}") from None
    if ckpt is not None:
        check_lists(path, ckpt, words, answers)
    else:
        check_sizes(path, model, words, answers)
    return LoadedModel(model=model, source=source, checkpoint=ckpt)


def check_lists(path: Path, ckpt: dict[str, Any], words: list[str] | None, answers: list[str] | None) -> None:
    """Refuse data whose vocabulary or answer list differs from the checkpoint's, saying how."""
    for name, items, key in (("vocabulary", words, "words"), ("answer list", answers, "answers")):
        if items is None:
            continue
        if digest(items) != ckpt.get(f"{key}_digest"):
            theirs = ckpt.get(f"num_{key}")
            how = (f"the same {theirs} entries in number, but other entries or another order" if theirs == len(items)
                   else f"{theirs} entries against {len(items)}")
            raise VQAError(
                f"{path}: the checkpoint's {name} differs from the processed data's ({how}; the checkpoint keeps "
                "its digest, not the list); process the same data it was trained on, or pass the lists it was "
                "trained with: --dictionary FILE --answers FILE"
            )


def check_sizes(path: Path, model: torch.nn.Module, words: list[str] | None, answers: list[str] | None) -> None:
    """A reference state_dict carries no lists: compare the sizes its tensors imply."""
    if words is not None and model.ntoken != len(words):
        raise VQAError(
            f"{path}: the checkpoint's vocabulary has {model.ntoken} words, the processed dictionary "
            f"{len(words)} ({model.ntoken - len(words):+d}); pass the reference pipeline's word list with "
            "--dictionary dictionary.pkl"
        )
    if answers is not None and model.num_answers != len(answers):
        raise VQAError(
            f"{path}: the checkpoint has {model.num_answers} answers, the answers file {len(answers)} "
            f"({model.num_answers - len(answers):+d}); pass the reference pipeline's answer list with "
            "--answers trainval_label2ans.pkl"
        )


def remap_to_data(model: torch.nn.Module, model_words: list[str], model_answers: list[str],
                  data_words: list[str], data_answers: list[str], glove: np.ndarray) -> torch.nn.Module:
    """A model over the processed data's word and answer lists, its rows copied from `model` by string.

    Words the checkpoint lacks keep their GloVe rows; answers it lacks keep a fresh classifier row.
    Used by `main.py --load CKPT --dictionary F --answers F` to fine-tune a reference checkpoint.
    """
    from dataclasses import replace

    from vqa_cp.model import BUTD

    new = BUTD(replace(model.config, ntoken=len(data_words), num_answers=len(data_answers)))
    new.init_embedding(glove)
    state = new.state_dict()
    old = model.state_dict()
    for key, value in old.items():
        if key.startswith(("w_emb.", "classifier.main.3.")):
            continue
        state[key] = value
    word_index = {w: i for i, w in enumerate(model_words)}
    emb_key = "w_emb.emb.weight"
    for i, word in enumerate(data_words):
        if word in word_index:
            state[emb_key][i] = old[emb_key][word_index[word]]
    answer_index = {a: i for i, a in enumerate(model_answers)}
    rows = [(i, answer_index[a]) for i, a in enumerate(data_answers) if a in answer_index]
    for key in [k for k in old if k.startswith("classifier.main.3.") and old[k].dim() > 0]:
        for i, j in rows:
            state[key][i] = old[key][j]
    v_key = "classifier.main.3.parametrizations.weight.original1"
    g_key = "classifier.main.3.parametrizations.weight.original0"
    # the scalar weight-norm gain keeps the checkpoint's overall scale for the copied rows
    state[g_key] = old[g_key] * state[v_key].norm() / old[v_key].norm()
    new.load_state_dict(state)
    return new
