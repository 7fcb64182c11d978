"""The bottom-up detector: checkpoint forms, bad checkpoints, box ops against references, both selections."""

from __future__ import annotations

import copy
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vqa_cp.detector import (
    AnchorGenerator,
    DetectorConfig,
    FasterRCNN,
    apply_deltas,
    box_iou,
    classwise_max_conf,
    nms,
    roi_pool,
)
from vqa_cp.errors import VQAError
from vqa_cp.extraction import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BottomUpDetector,
    TooFewBoxes,
    _select_caffe,
    preprocess,
    published_config,
    read_config,
    read_weights,
    resize_scale,
    resized_size,
    write_random_detector,
)

PUBLISHED_BYTES = 262_398_754
SMALL = {"MIN_SIZE_TEST": 96, "MAX_SIZE_TEST": 160, "POST_NMS_TOPK_TEST": 40, "POOLER_RESOLUTION": 2,
         "NMS_THRESH_TEST": [0.5, 0.7, 0.9, 0.99]}


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """Random weights of the published names and shapes; a small input (96 px), 40 proposals, 2 x 2 RoI pooling
    (res5 on 300 RoIs of 14 x 14 is ~900 GMAC an image: too slow for a CPU test)."""
    return write_random_detector(tmp_path_factory.mktemp("det") / "small", seed=3, **SMALL)


@pytest.fixture(scope="module")
def detector(small_folder) -> BottomUpDetector:
    return BottomUpDetector.from_pretrained(small_folder)


def images(seed: int = 0) -> list[np.ndarray]:
    """Generated images of different sizes and aspect ratios (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((100, 150), (210, 120), (31, 45)):
        y, x = np.mgrid[0:h, 0:w]
        base = 128 + 100 * np.sin(x[..., None] / (7 + 3 * np.arange(3)) + y[..., None] / 11)
        out.append(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


# ------------------------------------------------------------------------------------------------ checkpoints
def test_both_forms_load_identical_weights_with_published_shapes(small_folder, tmp_path):
    pickled = write_random_detector(tmp_path / "pickle", form="pickle", seed=3)  # the published config
    raw = (pickled / WEIGHTS_NAME).read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"numpy._core" not in raw  # written as numpy 1 did
    assert b".norm.gamma" in raw and b".norm.weight" not in raw
    a, b = read_weights(small_folder / WEIGHTS_NAME), read_weights(pickled / WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shapes = {"backbone.stem.conv1.weight": (64, 3, 7, 7), "backbone.stem.conv1.norm.running_var": (64,),
              "backbone.res4.22.conv3.weight": (1024, 256, 1, 1),
              "proposal_generator.anchor_generator.cell_anchors.0": (12, 4),
              "proposal_generator.rpn_head.conv.weight": (512, 1024, 3, 3),
              "proposal_generator.rpn_head.objectness_logits.weight": (12, 512, 1, 1),
              "proposal_generator.rpn_head.anchor_deltas.weight": (48, 512, 1, 1),
              "roi_heads.res5.0.shortcut.weight": (2048, 1024, 1, 1),
              "roi_heads.box_predictor.cls_score.weight": (1601, 2048),
              "roi_heads.box_predictor.bbox_pred.weight": (6400, 2048),
              "roi_heads.box_predictor.cls_embedding.weight": (1601, 256),
              "roi_heads.box_predictor.fc_attr.weight": (512, 2304),
              "roi_heads.box_predictor.attr_score.weight": (401, 512)}
    assert {k: tuple(a[k].shape) for k in shapes} == shapes
    # the published file's size is within 0.1 % of these tensors' bytes: the same set of shapes
    assert abs(sum(v.numel() * 4 for v in a.values()) - PUBLISHED_BYTES) / PUBLISHED_BYTES < 1e-3
    det = BottomUpDetector.from_pretrained(pickled)
    assert (det.num_boxes, det.feature_dim, det.shorter, det.longest) == (36, 2048, 600, 1000)
    predictor = det.model.roi_heads.box_predictor
    assert torch.equal(predictor.cls_score.weight, a["roi_heads.box_predictor.cls_score.weight"])


def one_line_error(call) -> str:
    with pytest.raises(VQAError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_are_one_line(small_folder, tmp_path):
    weights = read_weights(small_folder / WEIGHTS_NAME)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / CONFIG_NAME).write_bytes((small_folder / CONFIG_NAME).read_bytes())
    cases = {
        "missing: backbone.res4.22.conv3.weight": lambda w: w.pop("backbone.res4.22.conv3.weight"),
        "unexpected: roi_heads.extra.weight": lambda w: w.__setitem__("roi_heads.extra.weight", torch.zeros(2)),
        "misshapen: roi_heads.box_predictor.attr_score.weight (400, 512) not (401, 512)":
            lambda w: w.__setitem__("roi_heads.box_predictor.attr_score.weight", torch.zeros(400, 512)),
    }
    for expected, damage in cases.items():
        broken = dict(weights)
        damage(broken)
        torch.save(broken, folder / WEIGHTS_NAME)
        message = one_line_error(lambda: BottomUpDetector.from_pretrained(folder))
        assert str(folder / WEIGHTS_NAME) in message and expected in message
    whole = (small_folder / WEIGHTS_NAME).read_bytes()
    for cut in (len(whole) // 2, len(whole) - 10):  # a download cut short, in the data or in the central directory
        (folder / WEIGHTS_NAME).write_bytes(whole[:cut])
        message = one_line_error(lambda: BottomUpDetector.from_pretrained(folder))
        assert f"{folder / WEIGHTS_NAME}: a torch checkpoint (zip) cut short or damaged" in message, message


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_unexecuted(small_folder, tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / CONFIG_NAME).write_bytes((small_folder / CONFIG_NAME).read_bytes())
    (folder / WEIGHTS_NAME).write_bytes(pickle.dumps({"model": {"x": _RunsCode(marker)}}, protocol=2))
    message = one_line_error(lambda: BottomUpDetector.from_pretrained(folder))
    assert "refuses global posix.system" in message or "refuses global os.system" in message
    assert not marker.exists()


def test_config_keys_ignore_case_and_bad_values_are_one_line(small_folder, tmp_path):
    tree = yaml.safe_load((small_folder / CONFIG_NAME).read_text())

    def lower(node):
        return {k.lower(): lower(v) for k, v in node.items()} if isinstance(node, dict) else node

    folder = tmp_path / "lower"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(lower(tree)))
    text = (folder / CONFIG_NAME).read_text()
    # the demo reads config.yaml with yaml's full loader: a tuple tag (as yaml.dump writes tuples) must load
    (folder / CONFIG_NAME).write_text(text.replace("nms_thresh: 0.7", "nms_thresh: 0.7\n  xx: !!python/tuple [1, 2]"))
    cfg = read_config(folder)
    assert cfg.get("RPN", "XX") == [1, 2]
    (folder / CONFIG_NAME).write_text(text + "\nevil: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in one_line_error(lambda: read_config(folder))
    (folder / CONFIG_NAME).write_text(text)
    cfg = read_config(folder)
    with torch.device("meta"):
        model = FasterRCNN(cfg)
    assert (cfg.integer("INPUT", "MIN_SIZE_TEST"), model.proposal_generator.post_topk) == (96, 40)

    def build(section: str, key: str, value=None):
        changed = copy.deepcopy(tree)
        if value is None:
            del changed[section][key]
        else:
            changed[section][key] = value
        with torch.device("meta"):
            FasterRCNN(DetectorConfig.from_tree(changed, "cfg.yaml"))

    assert "cfg.yaml: no key RPN.NMS_THRESH" in one_line_error(lambda: build("RPN", "NMS_THRESH"))
    assert "POOLER_TYPE 'ROIAlignV2' is not implemented" in one_line_error(
        lambda: build("ROI_BOX_HEAD", "POOLER_TYPE", "ROIAlignV2"))


# ------------------------------------------------------------------------------------------------ box ops
def brute_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, plus_one: bool) -> list[int]:
    """Sequential greedy NMS, as bottom-up-attention's py_cpu_nms (stable order for ties)."""
    one = 1.0 if plus_one else 0.0
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + one
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + one
            inter = max(iw, 0) * max(ih, 0)
            area = [(b[2] - b[0] + one) * (b[3] - b[1] + one) for b in (boxes[i], boxes[j])]
            if inter / (area[0] + area[1] - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(rng: np.random.Generator, n: int, extent: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(2, extent / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("plus_one", [False, True])
def test_nms_matches_sequential_greedy(plus_one):
    rng = np.random.default_rng(1)
    for n, threshold in ((60, 0.3), (400, 0.7)):
        boxes = random_boxes(rng, n)
        scores = rng.random(n).astype(np.float32)
        expected = brute_nms(boxes, scores, threshold, plus_one)
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, plus_one=plus_one)
        assert got.tolist() == expected
        # only a prefix of the ranking is examined while it yields max_keep survivors: same first ones
        top = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, max_keep=20, plus_one=plus_one)
        assert top.tolist() == expected[:20]


def test_caffe_max_conf_hand_worked():
    # A and B overlap by IoU 50/150 = 0.333 with Caffe's +1 widths (> 0.3), 36/126 = 0.286 without;
    # D equals A; C is apart. class 0: A .9 B .8 C .1 D .05 -> A, C survive; class 1: B .7 D .6 A .2 C .05
    # -> B, C survive (D and A lose to B). max_conf: A .9, B .7, C .1, D 0.
    boxes = torch.tensor([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29], [0, 0, 9, 9]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.1, 0.05], [0.05, 0.6]])
    assert box_iou(boxes[:1], boxes[1:2], plus_one=True).item() == pytest.approx(50 / 150)
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(36 / 126)
    assert classwise_max_conf(boxes, scores, 0.3).tolist() == pytest.approx([0.9, 0.7, 0.1, 0.0])
    # a chain: E suppresses F (IoU 60/140), F would suppress G but is gone, so G stays (E-G IoU 20/180)
    chain = torch.tensor([[0, 0, 9, 9], [4, 0, 13, 9], [8, 0, 17, 9]], dtype=torch.float32)
    assert classwise_max_conf(chain, torch.tensor([[0.9], [0.8], [0.7]]), 0.3).tolist() == pytest.approx(
        [0.9, 0.0, 0.7])
    # selection: the 2 highest max_conf in order (A then B), objects from the foreground columns, boxes scaled
    probs = torch.cat([scores, torch.full((4, 1), 0.01)], dim=1)  # background last
    attrs = torch.tensor([[0.0, 2.0, 5.0], [3.0, 0.0, 9.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    keep, picked, objects, conf, attr_id, attr_conf = _select_caffe(boxes, probs, attrs, 1.0, 2)
    assert keep.tolist() == [0, 1] and conf.tolist() == pytest.approx([0.9, 0.8])
    assert objects.tolist() == [0, 0]  # B's best class, although B survived in class 1 only (as generate_tsv.py)
    assert attr_id.tolist() == [1, 0]  # the last attribute column is background: never chosen
    assert attr_conf[0].item() == pytest.approx(math.exp(2) / (1 + math.exp(2) + math.exp(5)))
    assert torch.equal(picked, boxes[:2])
    # proposals of an image resized by 0.5: boxes / im_scale in original pixels, where the +1 widths decide
    keep_half, picked_half = _select_caffe(boxes / 2, probs, attrs, 0.5, 2)[:2]
    assert keep_half.tolist() == [0, 1] and torch.equal(picked_half, boxes[:2])


def test_caffe_max_conf_matches_per_class_loop():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 40)
    scores = rng.dirichlet(np.ones(8), 40).astype(np.float32)
    expected = np.zeros(40, np.float32)
    for c in range(8):  # generate_tsv.py's loop over classes
        keep = brute_nms(boxes, scores[:, c], 0.3, plus_one=True)
        expected[keep] = np.maximum(expected[keep], scores[keep, c])
    got = classwise_max_conf(torch.from_numpy(boxes), torch.from_numpy(scores), 0.3, class_chunk=3)
    assert np.array_equal(got.numpy(), expected)


def test_caffe_max_conf_matches_per_class_loop_at_the_published_proposal_count():
    """300 proposals crowded on a 1,000 x 600 image, as the RPN gives (long suppression chains), scores from a
    softmax over 1,601 classes (tiny, close values); a sample of classes checked against the loop."""
    rng = np.random.default_rng(4)
    centres = rng.uniform([0, 0], [1000, 600], (12, 2))[rng.integers(0, 12, 300)] + rng.normal(0, 25, (300, 2))
    sizes = rng.uniform(20, 250, (300, 2))
    boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, [999, 599, 999, 599])
    boxes = boxes.astype(np.float32)
    logits = rng.normal(0, 2, (300, 1601))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    classes = rng.choice(1600, 12, replace=False)
    expected = np.zeros(300, np.float32)
    for c in classes:
        keep = brute_nms(boxes, probs[:, c], 0.3, plus_one=True)
        expected[keep] = np.maximum(expected[keep], probs[keep, c])
    got = classwise_max_conf(torch.from_numpy(boxes), torch.from_numpy(probs[:, classes]), 0.3, class_chunk=5)
    assert np.array_equal(got.numpy(), expected)
    whole = classwise_max_conf(torch.from_numpy(boxes), torch.from_numpy(probs[:, :-1]), 0.3)  # all 1,600 at once
    assert whole.shape == (300,) and bool((whole >= got).all()) and int((whole > 0).sum()) > 36


def brute_roi_pool(features: np.ndarray, sizes: np.ndarray, rois: np.ndarray, out: int, scale: float) -> np.ndarray:
    """torchvision's / Caffe's RoIPool, loop by loop, reading each image only within its own size."""
    result = np.zeros((len(rois), features.shape[1], out, out), np.float32)
    for r, (b, *box) in enumerate(rois):
        b = int(b)
        x1, y1, x2, y2 = (math.floor(v * scale + 0.5) for v in box)
        bh = np.float32(max(y2 - y1 + 1, 1)) / np.float32(out)
        bw = np.float32(max(x2 - x1 + 1, 1)) / np.float32(out)
        for ph in range(out):
            hs = min(max(math.floor(np.float32(ph) * bh) + y1, 0), sizes[b, 0])
            he = min(max(math.ceil(np.float32(ph + 1) * bh) + y1, 0), sizes[b, 0])
            for pw in range(out):
                ws = min(max(math.floor(np.float32(pw) * bw) + x1, 0), sizes[b, 1])
                we = min(max(math.ceil(np.float32(pw + 1) * bw) + x1, 0), sizes[b, 1])
                if he > hs and we > ws:
                    result[r, :, ph, pw] = features[b, :, hs:he, ws:we].max(axis=(1, 2))
    return result


@pytest.mark.parametrize("out", [3, 7, 14])
def test_roi_pool_matches_loops(out):
    rng = np.random.default_rng(out)
    features = rng.normal(size=(2, 5, 13, 17)).astype(np.float32)
    sizes = np.array([[13, 17], [9, 11]])
    features[1, :, 9:, :] = 1e6  # padding of the smaller image: must never be read
    features[1, :, :, 11:] = 1e6
    rois = []
    for b, (h, w) in enumerate(sizes * 16):
        for _ in range(12):
            x1, x2 = sorted(rng.uniform(0, w, 2))
            y1, y2 = sorted(rng.uniform(0, h, 2))
            rois.append([b, x1, y1, x2, y2])
        rois += [[b, 0, 0, w, h], [b, w - 3, h - 3, w, h], [b, 8, 8, 8, 8]]  # whole image, corner, a point
    rois = np.array(rois, np.float32)
    got = roi_pool(torch.from_numpy(features), torch.from_numpy(sizes), torch.from_numpy(rois), out, 1 / 16)
    assert np.array_equal(got.numpy(), brute_roi_pool(features, sizes, rois, out, 1 / 16))


# ------------------------------------------------------------------------------------------- preprocessing
def test_resized_sizes_by_hand():
    # one factor for both axes (generate_tsv.py's im_scale), not the rounded sizes' per-axis ratios
    assert resize_scale(427, 640, 600, 1000) == 600 / 427 and resize_scale(300, 1000, 600, 1000) == 1.0
    assert resized_size(427, 640, 600, 1000) == (600, 899)
    assert resized_size(480, 640, 600, 1000) == (600, 800)
    assert resized_size(300, 1000, 600, 1000) == (300, 1000)  # 600 x 2000 scaled back to a 1,000 longer side
    assert resized_size(333, 500, 600, 1000) == (600, 901)  # 900.9 rounds up
    assert resized_size(500, 333, 600, 1000) == (901, 600)
    assert resized_size(100, 100, 600, 1000) == (600, 600)


def test_preprocess_bgr_means_and_bilinear_by_hand():
    mean = torch.tensor([102.9801, 115.9465, 122.7717])
    std = torch.ones(3)
    image = np.array([[[10, 20, 30], [50, 60, 70]]], np.uint8)  # 1 x 2 RGB
    same = preprocess(image, mean, std, (1, 2), torch.device("cpu"))
    bgr = np.array([[30, 70], [20, 60], [10, 50]], np.float32)  # channel order B, G, R
    expected = bgr - mean.numpy()[:, None]
    assert np.allclose(same.numpy()[:, 0], expected, atol=1e-5)
    wide = preprocess(image, mean, std, (1, 4), torch.device("cpu"))
    # half-pixel centres: x_src = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped to [0, 1]
    weights = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], np.float32)
    assert np.allclose(wide.numpy()[:, 0], expected @ weights.T, atol=1e-4)


# ----------------------------------------------------------------------------------------------- selections
def check_result(result: dict, image: np.ndarray, count: int = 36) -> None:
    h, w = image.shape[:2]
    assert (result["image_h"], result["image_w"]) == (h, w)
    for key, shape, dtype in (("boxes", (count, 4), np.float32), ("features", (count, 2048), np.float32),
                              ("objects_id", (count,), np.int64), ("objects_conf", (count,), np.float32),
                              ("attrs_id", (count,), np.int64), ("attrs_conf", (count,), np.float32)):
        assert result[key].shape == shape and result[key].dtype == dtype, key
        assert np.isfinite(result[key]).all(), key
    boxes = result["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all() and (
        boxes[:, 3] <= h).all() and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert len({tuple(b) for b in boxes.tolist()}) > count // 2  # not one box repeated
    assert (result["objects_id"] < 1600).all() and (result["attrs_id"] < 400).all()
    assert ((result["objects_conf"] > 0) & (result["objects_conf"] < 0.99)).all()  # random weights: no one-hot
    assert result["features"].std() > 0.1 and (result["features"] >= 0).all()  # mean of ReLU outputs


@pytest.mark.parametrize("select", ["caffe", "lxmert"])
def test_extract_batched_equals_one_at_a_time_and_is_deterministic(detector, select):
    pictures = images()
    batched = detector.extract(pictures, select=select)
    again = detector.extract(pictures, select=select)
    single = [detector.extract([p], select=select)[0] for p in pictures]
    for image, a, b, c in zip(pictures, batched, again, single):
        check_result(a, image)
        for key in a:
            assert np.array_equal(a[key], b[key]), key  # deterministic
        # every image's network work is its own batch and RoI pooling never reads another image: bit-identical
        for key in a:
            assert np.array_equal(a[key], c[key]), key
    if select == "caffe":  # the Caffe selection orders boxes by max_conf, which is at least the object score
        assert (batched[0]["objects_conf"] <= 1).all()


def test_too_few_boxes_are_refused_not_padded(detector):
    pictures = images()
    greedy = copy.copy(detector)
    greedy.num_boxes = 41  # more than the 40 proposals
    with pytest.raises(TooFewBoxes) as info:
        greedy.extract(pictures[:2], select="caffe")
    assert info.value.indices == [0, 1] and "image 1 (210 x 120): 40 proposals" in str(info.value)
    strict = copy.copy(detector)
    strict.nms_thresholds = [0.0]  # any overlap suppresses: far fewer than 36 survive
    with pytest.raises(TooFewBoxes):
        strict.extract(pictures[:1], select="lxmert")


def test_bf16_autocast_runs_and_stays_close(detector):
    picture = images()[2:]  # the smallest: bfloat16 convolutions are slow on CPUs without bf16 units
    full = detector.extract(picture, select="caffe")[0]
    half = detector.extract(picture, select="caffe", amp="bf16")[0]
    check_result(half, picture[0])
    assert np.isfinite(half["features"]).all()
    assert np.corrcoef(full["features"].mean(0), half["features"].mean(0))[0, 1] > 0.9


def test_published_config_is_what_the_issue_states():
    cfg = published_config()
    assert cfg["MODEL"]["PIXEL_MEAN"] == [102.9801, 115.9465, 122.7717]
    assert (cfg["INPUT"]["MIN_SIZE_TEST"], cfg["INPUT"]["MAX_SIZE_TEST"]) == (600, 1000)
    assert (cfg["RPN"]["PRE_NMS_TOPK_TEST"], cfg["RPN"]["POST_NMS_TOPK_TEST"], cfg["RPN"]["NMS_THRESH"]) == (
        6000, 300, 0.7)
    assert cfg["ROI_BOX_HEAD"]["POOLER_RESOLUTION"] == 14 and cfg["ROI_BOX_HEAD"]["RES5HALVE"] is False


def test_caffe_boxes_are_the_proposals_in_original_pixels(detector):
    picture = images()[1]  # 210 x 120, resized to 160 x 91
    with torch.inference_mode():
        _, proposals, hws = detector._propose([picture])
    im_scale = resize_scale(210, 120, detector.shorter, detector.longest)  # one factor, as generate_tsv.py
    assert hws[0] == (round(210 * im_scale), round(120 * im_scale))
    candidates = {tuple(np.round(b, 3)) for b in (proposals[0] / im_scale).numpy().tolist()}
    boxes = detector.extract([picture], select="caffe")[0]["boxes"]
    assert all(tuple(np.round(b, 3)) in candidates for b in boxes.tolist())


def test_boxes_stay_inside_an_image_whose_resized_side_rounds_up(detector):
    # 97 x 143 at a shorter side of 96: the width becomes 141.53 -> 142, and 142 / (96 / 97) = 143.48 > 143
    assert resized_size(97, 143, detector.shorter, detector.longest) == (96, 142)
    picture = np.random.default_rng(5).integers(0, 256, (97, 143, 3), dtype=np.uint8)
    for select in ("caffe", "lxmert"):
        check_result(detector.extract([picture], select=select)[0], picture)


def test_bad_images_are_one_line(detector):
    for bad in (np.zeros((20, 30), np.uint8), np.zeros((20, 30, 4), np.uint8), np.zeros((0, 30, 3), np.uint8),
                np.zeros((20, 30, 3), np.float32)):
        assert "image 1: not a uint8 H x W x 3 RGB array" in one_line_error(
            lambda: detector.extract([images()[2], bad]))  # noqa: B023


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_extract_on_cuda(small_folder, detector, amp):
    """On a GPU: deterministic, batched = one at a time, and (TF32 off, float32) the CPU's boxes."""
    gpu = BottomUpDetector.from_pretrained(small_folder, device="cuda")
    pictures = images()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = amp is not None
    try:
        batched = gpu.extract(pictures, amp=amp)
        again = gpu.extract(pictures, amp=amp)
        single = [gpu.extract([p], amp=amp)[0] for p in pictures]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    cpu = detector.extract(pictures)
    for image, a, b, c, d in zip(pictures, batched, again, single, cpu):
        check_result(a, image)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert all(np.array_equal(a[k], c[k]) for k in a)
        if amp is None:
            same = {tuple(x) for x in np.round(a["boxes"], 2).tolist()} & {
                tuple(x) for x in np.round(d["boxes"], 2).tolist()}
            assert len(same) >= 30  # near-ties between CPU and GPU rounding may swap a few


def test_box_decoding_and_anchor_grid_by_hand():
    # box 10 x 20 centred at (5, 10); weights (10, 10, 5, 5): dx = 1 -> +0.1 w, dw = 5 ln 2 -> width x 2
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[1.0, -2.0, 5 * math.log(2), 0.0]])
    assert apply_deltas(deltas, box, [10, 10, 5, 5]).tolist() == [pytest.approx([-4.0, -4.0, 16.0, 16.0])]
    generator = AnchorGenerator(2)
    generator.cell_anchors[0].data = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [-16.0, -4.0, 16.0, 4.0]])
    grid = generator.grid(2, 3, 16, 0.0)  # order (y, x, anchor)
    assert grid.shape == (12, 4)
    assert grid[2 * (1 * 3 + 2) + 1].tolist() == [32 - 16, 16 - 4, 32 + 16, 16 + 4]  # y 1, x 2, anchor 1


def test_rpn_proposals(detector):
    picture = images()[0]
    with torch.inference_mode():
        _, proposals, hws = detector._propose([picture])
    boxes, (h, w) = proposals[0], hws[0]
    assert len(boxes) == 40 and (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) > 16).all()  # PROPOSAL_GENERATOR.MIN_SIZE
    overlap = box_iou(boxes, boxes) > 0.7
    assert not torch.triu(overlap, diagonal=1).any()  # RPN.NMS_THRESH held among the kept


class _Python2Pickler(pickle._Pickler):
    """Writes as Python 2's cPickle with numpy 1 did at protocol 2: strings (names and the arrays' raw data) as
    BINSTRING, no `_codecs.encode`; arrays by `numpy.core.multiarray._reconstruct`."""

    dispatch = dict(pickle._Pickler.dispatch)
    reconstruct = np.ndarray((0,)).__reduce__()[0]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little"))
                   + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = lambda self, obj: self.save_py2_str(obj.encode("ascii"))

    def save_global(self, obj, name=None):
        if obj is self.reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_a_python2_numpy1_pickle_loads_the_same_weights(tmp_path):
    arrays = {"backbone.stem.conv1.norm.gamma": np.arange(4, dtype=np.float32) / 3,
              "roi_heads.box_predictor.cls_score.weight": np.random.default_rng(0).normal(size=(300, 2)).astype(
                  np.float32)}
    path = tmp_path / WEIGHTS_NAME
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump({"model": arrays, "__author__": "Detectron"})
    raw = path.read_bytes()
    assert b"_codecs" not in raw and pickle.BINSTRING in raw  # strings as Python 2 wrote them
    weights = read_weights(path)
    assert sorted(weights) == ["backbone.stem.conv1.norm.weight", "roi_heads.box_predictor.cls_score.weight"]
    for (name, array), got in zip(sorted(arrays.items()), (weights[k] for k in sorted(weights))):
        assert got.dtype == torch.float32 and np.array_equal(got.numpy(), array), name
