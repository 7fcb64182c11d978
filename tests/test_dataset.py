"""VQADataset items and batches on the tiny raw fixture (processed by the library, min count 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.raw_fixtures import make_images, tsv_line, tsv_path, write_raw, write_tsv
from vqa_cp.dataset import VQADataset, load_processed, load_training_data, split_by_image
from vqa_cp.errors import VQAError
from vqa_cp.features import FeatureStore, process_features, tsv_to_hdf5
from vqa_cp.processing import process_answers, process_text

PAD = 21  # 21 dictionary words (hand list in test_processing.py)
# cp labels: yes, black, red, "2"; train questions 101..105 on images 1, 2, 2, 3, 1
TRAIN_IMAGES = [1, 2, 2, 3, 1]
TRAIN_TARGET = [[0, 1.0, 0, 0], [0, 0.3, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0.9], [1.0, 0, 0, 0]]
TRAIN_BIAS = [[0, 0.65, 0.5, 0], [0, 0.65, 0.5, 0], [1.0, 0, 0, 0], [0, 0, 0, 0.9], [1.0, 0, 0, 0]]


def process(data: Path) -> None:
    quiet = lambda _: None  # noqa: E731
    process_text(data, log=quiet)
    process_answers(data, min_count=1, log=quiet)
    process_features(data, log=quiet)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw")
    write_raw(path)
    process(path)
    return path


def store(data: Path) -> FeatureStore:
    return FeatureStore(data / "processed" / "features.h5")


def expected_features(image_id: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Features of the fixture's image `image_id`, rounded through `dtype`."""
    (image,) = [im for im in make_images() if im.image_id == image_id]
    return torch.from_numpy(image.features).to(dtype).float()


def test_items(data: Path) -> None:
    ds = VQADataset(data, "cp", "train", features=store(data))
    assert len(ds) == 5 and ds.num_answers == 4 and ds.answers == ["yes", "black", "red", "2"]
    assert ds.dictionary_size == PAD
    assert ds.question_ids.tolist() == [101, 102, 103, 104, 105]
    assert ds.answer_types.tolist() == [2, 2, 0, 1, 0]
    features, tokens, target, bias, qid = ds[1]
    assert features.dtype == torch.float32 and torch.equal(features, expected_features(2))
    assert tokens.dtype == torch.int64 and tokens.tolist() == [PAD] * 7 + [0, 1, 2, 3, 5, 6, 7]
    assert target.dtype == torch.float32 and target.tolist() == pytest.approx([0, 0.3, 1.0, 0])
    assert bias.dtype == torch.float32 and bias.tolist() == pytest.approx([0, 0.65, 0.5, 0])
    assert qid == 102

    test = VQADataset(data, "cp", "test", features=ds.features)
    _, _, target, bias, qid = test[1]  # question 202: test-only type, no answer in the vocabulary
    assert qid == 202 and target.tolist() == [0, 0, 0, 0]
    assert bias.tolist() == pytest.approx([0.4, 0.26, 0.2, 0.18])
    assert test.gt_answers()[0] == ["black"] * 2 + ["blue"] * 8


def test_indices_subset(data: Path) -> None:
    ds = VQADataset(data, "v2", "test", features=store(data), indices=[4, 0])
    assert ds.question_ids.tolist() == [203, 104]
    assert ds[0][4] == 203 and ds[1][4] == 104
    assert ds.gt_answers() == [["yes"] * 10, ["2"] * 3 + ["two"] * 4 + ["3"] * 3]
    ann = ds.annotations()
    assert ann["question_id"] == [203, 104] and ann["answer_type"] == ["yes/no", "number"]
    assert ann["question_type"] == ["is the", "how many"] and ann["multiple_choice_answer"] == ["yes", "two"]
    with pytest.raises(VQAError, match="indices out of range"):
        VQADataset(data, "v2", "test", features=ds.features, indices=[5])


@pytest.mark.parametrize("cache", [None, torch.float32, torch.float16])
def test_dataloader_two_workers(data: Path, cache: torch.dtype | None) -> None:
    features = store(data)
    train = VQADataset(data, "cp", "train", features=features)
    test = VQADataset(data, "cp", "test", features=features)
    if cache is not None:
        features.cache(cache, log=lambda _: None)
    dtype = cache or torch.float32
    train[0]  # the parent holds an open HDF5 handle when the workers fork
    loader = DataLoader(train, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [len(b[4]) for b in batches] == [2, 2, 1]
    v, q, a, b, qid = (torch.cat([batch[i] for batch in batches]) for i in range(5))
    assert v.shape == (5, 2, 3) and v.dtype == torch.float32
    assert torch.equal(v, torch.stack([expected_features(i, dtype) for i in TRAIN_IMAGES]))
    assert q.shape == (5, 14) and q.dtype == torch.int64 and q[0].tolist() == [PAD] * 9 + [0, 1, 2, 3, 4]
    assert torch.allclose(a, torch.tensor(TRAIN_TARGET))
    assert torch.allclose(b, torch.tensor(TRAIN_BIAS))
    assert qid.dtype == torch.int64 and qid.tolist() == [101, 102, 103, 104, 105]
    test_v = torch.cat([batch[0] for batch in DataLoader(test, batch_size=3, num_workers=2)])
    assert torch.equal(test_v, torch.stack([expected_features(i, dtype) for i in (3, 1, 3)]))


def test_questions_without_features(tmp_path: Path) -> None:
    write_raw(tmp_path)
    process(tmp_path)
    # process_features refuses a copy missing images that the questions use; one made otherwise is caught here
    write_tsv(tsv_path(tmp_path), [tsv_line(im) for im in make_images((1, 2))])  # image 3 missing
    tsv_to_hdf5(tsv_path(tmp_path), tmp_path / "processed" / "features.h5", progress=False)
    with pytest.raises(VQAError, match=r"2 of 3 questions in .*test\.npz have no image features in "
                                       r".*features\.h5: question_id 201, 203 \(image_id 3, 3\)"):
        VQADataset(tmp_path, "cp", "test", features=store(tmp_path))


def test_missing_processed_data(tmp_path: Path) -> None:
    with pytest.raises(VQAError, match=r"processed data not found: .*dictionary\.json; run "
                                       r"`bash tools/process\.sh --data .*` \(or `python main\.py --toy`\)"):
        load_processed(tmp_path, "cp")


def test_load_processed(data: Path) -> None:
    p = load_processed(data, "cp")
    assert len(p.dictionary) == PAD and p.dictionary.padding_idx == PAD
    assert p.glove.shape == (PAD, 4) and p.glove.dtype == np.float32
    assert p.answers == ["yes", "black", "red", "2"]
    assert p.question_types == ["is the", "what color is the", "how many", "what is the"]
    assert p.bias.shape == (4, 4)
    with pytest.raises(VQAError, match="unknown dataset 'vqa'"):
        load_processed(data, "vqa")


def test_load_training_data(data: Path) -> None:
    td = load_training_data(data, cache_features=True, cache_dtype="float16", val_fraction=0.4, seed=3)
    assert (td.ntoken, td.num_answers, td.num_boxes, td.v_dim, td.eval_name) == (PAD, 4, 2, 3, "test")
    assert td.features.cached == torch.float16
    assert td.train.features is td.val.features is td.eval.features is td.features
    assert len(td.val) >= 1 and len(td.train) >= 1 and len(td.val) + len(td.train) == 5
    assert not set(td.val.image_ids.tolist()) & set(td.train.image_ids.tolist())
    assert sorted(td.train.question_ids.tolist() + td.val.question_ids.tolist()) == [101, 102, 103, 104, 105]
    assert td.eval.question_ids.tolist() == [201, 202, 203]
    again = load_training_data(data, val_fraction=0.4, seed=3)
    assert again.val.question_ids.tolist() == td.val.question_ids.tolist() and again.features.cached is None
    v2 = load_training_data(data, nocp=True)
    assert v2.val is None and v2.eval_name == "val2014" and v2.answers == ["black", "red", "yes"]


def test_split_by_image_keeps_each_image_on_one_side() -> None:
    image_ids = np.array([5, 5, 5, 7, 7, 9, 9, 9, 9, 11])
    val, train = split_by_image(image_ids, 0.3, seed=0)
    assert sorted(val.tolist() + train.tolist()) == list(range(10))
    assert not set(image_ids[val].tolist()) & set(image_ids[train].tolist())
    # whole images are taken until the share reaches 30% of 10 questions
    assert 3 <= len(val) <= 3 + 3
    again, _ = split_by_image(image_ids, 0.3, seed=0)
    assert again.tolist() == val.tolist()


@pytest.mark.parametrize("mode, workers", [("lazy", 0), ("lazy", 2), ("float16", 0), ("float16", 2),
                                           ("float32", 0), ("device", 0)])
def test_whole_batches_equal_the_dataloader(toy_data: Path, mode: str, workers: int) -> None:
    """batch_loader gives the per-item DataLoader's batches, bit for bit and dtype for dtype, in the sampler's
    order (a subset of questions, an EpochSampler whose rank padding repeats items, a short last batch),
    with and without worker processes."""
    from vqa_cp.dataset import batch_loader
    from vqa_cp.distributed import EpochSampler

    features = FeatureStore(toy_data / "processed" / "features.h5")
    subset = np.arange(0, 850, 2)
    ds = VQADataset(toy_data, "cp", "train", features=features, indices=subset)
    if mode != "lazy":
        features.cache(torch.float32 if mode == "float32" else torch.float16, log=lambda _: None)
    if mode == "device":
        features.keep_on_device(torch.device("cpu"), log=lambda _: None)
    sampler = EpochSampler(len(ds), seed=5, rank=1, world=3)
    sampler.set_epoch(2)
    expected = list(DataLoader(ds, batch_size=64, sampler=sampler))
    loader = batch_loader(ds, sampler, 64, num_workers=workers)
    got = list(loader)
    assert len(got) == len(expected) == len(loader) == -(-len(sampler) // 64)
    for ours, theirs in zip(got, expected):
        features, *rest = ours
        # a RAM cache's batch stays in the cache's dtype (widened on the device): the same values
        assert features.dtype == (torch.float16 if mode == "float16" else theirs[0].dtype)
        assert torch.equal(features.to(theirs[0].dtype), theirs[0])
        for a, b in zip(rest, theirs[1:]):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert len(list(batch_loader(ds, range(130), 64, drop_last=True))) == 2


def test_batch_targets_match_the_csr_arrays(data: Path) -> None:
    """Dense targets and bias rows of a batch with a repeated item, against the hand-computed values."""
    ds = VQADataset(data, "cp", "train", features=store(data))
    _, tokens, target, bias, qids = ds.batch([3, 0, 3, 1])
    np.testing.assert_allclose(target.numpy(), np.array(TRAIN_TARGET)[[3, 0, 3, 1]], rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), np.array(TRAIN_BIAS)[[3, 0, 3, 1]], rtol=1e-6)
    assert qids.tolist() == [104, 101, 104, 102] and tokens.shape == (4, 14)
    with pytest.raises(IndexError):
        ds.batch([5])
