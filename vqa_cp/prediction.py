"""Predictions of a trained model on a processed split: the library behind save_predictions.py,
tools/information_scores.py and tools/visualize.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqa_cp import checkpoints as ckpts
from vqa_cp.dataset import VQADataset, load_processed
from vqa_cp.errors import VQAError
from vqa_cp.features import FEATURES_FILE, FeatureStore
from vqa_cp.processing import processed_dir
from vqa_cp.regularization import RegParameters, information_regularizer


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a training output folder (its model.pth, else its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.pth").is_file():
            return path / "model.pth"
        found = ckpts.list_checkpoints(path)
        if not found:
            raise VQAError(f"{path}: no model.pth or checkpoint_e*_s*.pth in this folder")
        return found[0]
    if not path.exists():
        raise VQAError(f"checkpoint not found: {path}")
    return path


@dataclass
class ModelForData:
    """A loaded model, the answer list its outputs index, and a map from the processed token ids
    to the ids of the vocabulary the model was trained with (identity unless --dictionary)."""

    model: torch.nn.Module
    answers: list[str]
    token_map: torch.Tensor | None
    source: str


def load_model_for_data(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, nocp: bool = False,
                        dictionary: str | None = None, answers: str | None = None) -> ModelForData:
    """Load a checkpoint against processed data, translating token ids when its word list differs."""
    processed = load_processed(data_dir, "v2" if nocp else "cp")
    data_words = processed.dictionary.idx2word
    model_words = ckpts.read_reference_words(dictionary) if dictionary else data_words
    model_answers = ckpts.read_reference_answers(answers) if answers else processed.answers
    loaded = ckpts.load_model(resolve_checkpoint(checkpoint), words=model_words, answers=model_answers)
    token_map = None
    if model_words != data_words:
        index = {w: i for i, w in enumerate(model_words)}
        pad = len(model_words)
        token_map = torch.tensor([index.get(w, pad) for w in data_words] + [pad], dtype=torch.long)
    return ModelForData(loaded.model, model_answers, token_map, loaded.source)


def open_split(data_dir: str | os.PathLike, split: str, nocp: bool = False) -> VQADataset:
    """The processed split with its feature store."""
    features_path = processed_dir(data_dir) / FEATURES_FILE
    if not features_path.is_file():
        raise VQAError(f"processed features not found: {features_path}; run `bash tools/process.sh --data "
                       f"{data_dir}` (or `python main.py --toy`)")
    return VQADataset(data_dir, "v2" if nocp else "cp", split, features=FeatureStore(features_path))


@torch.no_grad()
def predict_answers(loaded: ModelForData, dataset: VQADataset, batch_size: int = 256, device: str = "cpu",
                    num_workers: int = 0) -> tuple[np.ndarray, list[str]]:
    """Question ids and predicted answer strings for every question of the split (progress bar)."""
    model = loaded.model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    qids, labels = [], []
    for v, q, _target, _bias, qid in tqdm(loader, desc="predict", dynamic_ncols=True):
        if loaded.token_map is not None:
            q = loaded.token_map[q]
        logits, _ = model(v.to(device).float(), q.to(device))
        labels.append(logits.argmax(1).cpu().numpy())
        qids.append(qid.numpy())
    label_array = np.concatenate(labels)
    return np.concatenate(qids), [loaded.answers[i] for i in label_array.tolist()]


def results_list(question_ids: np.ndarray, answers: list[str]) -> list[dict]:
    """The official results format: [{"question_id": int, "answer": str}, ...]."""
    return [{"question_id": int(q), "answer": a} for q, a in zip(question_ids.tolist(), answers)]


def information_scores(loaded: ModelForData, dataset: VQADataset, params: RegParameters, batch_size: int = 256,
                       device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Mean information score of each modality (question, image) over a split, model in eval mode.

    The same estimate the regulariser trains with (perturb the head's inputs q_emb and v_emb),
    averaged over batches weighted by their size; a reproducible noise draw for a given seed.
    """
    model = loaded.model.to(device).eval()
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    totals, count = torch.zeros(2, dtype=torch.float64), 0
    for v, q, _target, _bias, _qid in tqdm(loader, desc="information scores", dynamic_ncols=True):
        if loaded.token_map is not None:
            q = loaded.token_map[q]
        v, q = v.to(device).float(), q.to(device)
        with torch.no_grad():
            q_emb, v_emb = model.trunk(v, q)
            logits, _ = model.head(q_emb, v_emb)
        out = information_regularizer(model.head, [q_emb, v_emb], logits, params)
        totals += out.scores.detach().double().cpu() * v.shape[0]
        count += v.shape[0]
    scores = (totals / count).tolist()
    return {"question": scores[0], "image": scores[1]}
