"""Bottom-up attention features from images: the hub port's checkpoint, preprocessing and the 36-box selections.

`BottomUpDetector.from_pretrained(folder)` reads the hub folder of `unc-nlp/frcnn-vg-finetuned`
(`config.yaml` + `pytorch_model.bin`, a torch state dict or a plain pickle of numpy arrays);
`detector.extract(images, select="caffe"|"lxmert")` gives 36 boxes per image. `write_random_detector` writes
a folder of the same form with random weights, for tests. The network itself lives in `vqa_cp.detector`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from vqa_cp.detector import (
    DetectorConfig,
    FasterRCNN,
    anchor_ratios,
    anchor_sizes,
    apply_deltas,
    cell_anchors,
    classwise_max_conf,
    clip_boxes,
    nms,
)
from vqa_cp.errors import VQAError
from vqa_cp.files import atomic_path

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "pytorch_model.bin"
NUM_BOXES = 36
CAFFE_NMS = 0.3  # bottom-up-attention's cfg.TEST.NMS, the per-class NMS of generate_tsv.py (not in config.yaml)
SELECTIONS = ("caffe", "lxmert")
AMP_MODES = (None, "bf16")
LEGACY_NAMES = {"gamma": "weight", "beta": "bias"}  # norm parameters in old pickles, renamed as the demo does


class TooFewBoxes(VQAError):
    """Some images gave fewer than the boxes asked for; `indices` are their positions in the call's list."""

    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = indices


# ------------------------------------------------------------------------------------------- published config
def published_config() -> dict[str, Any]:
    """config.yaml as the hub port's demo reads it (sections at the top level), with the published model's
    values: ResNet-101 C4, 600 / 1000 input, 12 anchors, 6,000 -> 300 proposals, 14 x 14 RoIPool, 1,600 + 400."""
    return {
        "MODEL": {"DEVICE": "cpu", "MAX_POOL": True, "PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
                  "PIXEL_STD": [1.0, 1.0, 1.0], "LOAD_PROPOSALS": False},
        "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": 600, "MAX_SIZE_TEST": 1000},
        "SIZE_DIVISIBILITY": 0, "PAD_VALUE": 0.0,
        "BACKBONE": {"FREEZE_AT": 2},
        "RESNETS": {"DEPTH": 101, "NORM": "BN", "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64,
                    "RES2_OUT_CHANNELS": 256, "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "OUT_FEATURES": ["res4"]},
        "PROPOSAL_GENERATOR": {"MIN_SIZE": 16, "HIDDEN_CHANNELS": 512},
        "ANCHOR_GENERATOR": {"SIZES": [[64, 128, 256, 512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]], "OFFSET": 0.0},
        "RPN": {"IN_FEATURES": ["res4"], "NMS_THRESH": 0.7, "PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 300,
                "PRE_NMS_TOPK_TRAIN": 12000, "POST_NMS_TOPK_TRAIN": 2000, "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
                "BATCH_SIZE_PER_IMAGE": 256, "POSITIVE_FRACTION": 0.5, "SMOOTH_L1_BETA": 0.0, "LOSS_WEIGHT": 1.0,
                "BOUNDARY_THRESH": -1, "IOU_THRESHOLDS": [0.3, 0.7], "IOU_LABELS": [0, -1, 1]},
        "ROI_HEADS": {"IN_FEATURES": ["res4"], "NUM_CLASSES": 1600, "NMS_THRESH_TEST": [0.6, 0.7, 0.8, 0.9],
                      "SCORE_THRESH_TEST": 0.2, "POSITIVE_FRACTION": 0.25, "PROPOSAL_APPEND_GT": True},
        "ROI_BOX_HEAD": {"POOLER_TYPE": "ROIPool", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0,
                         "RES5HALVE": False, "ATTR": True, "NUM_ATTRS": 400, "CLS_AGNOSTIC_BBOX_REG": False,
                         "BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0], "SMOOTH_L1_BETA": 0.0},
        "MIN_DETECTIONS": NUM_BOXES, "MAX_DETECTIONS": NUM_BOXES,
    }


def _override(tree: dict[str, Any], name: str, value: Any) -> None:
    """Set `SECTION__KEY` (or a KEY found in exactly one section, or a top-level KEY), ignoring case."""
    upper = name.upper()
    if "__" in upper:
        section, key = upper.split("__", 1)
        if section not in tree or not isinstance(tree[section], dict) or key not in tree[section]:
            raise ValueError(f"no config key {section}.{key}")
        tree[section][key] = value
        return
    hits = [sec for sec, body in tree.items() if isinstance(body, dict) and upper in body]
    if upper in tree and not isinstance(tree[upper], dict):
        hits.append("")
    if len(hits) != 1:
        raise ValueError(f"config key {name!r} names {len(hits)} keys; write SECTION__KEY")
    if hits[0]:
        tree[hits[0]][upper] = value
    else:
        tree[upper] = value


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML plus `!!python/tuple` (yaml.dump of a config holding tuples writes it), read as a list."""


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def read_config(folder: Path) -> DetectorConfig:
    path = folder / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VQAError(f"{path}: not found (the detector folder needs {CONFIG_NAME} and {WEIGHTS_NAME})") from None
    try:
        tree = yaml.load(text, Loader=_ConfigLoader)  # safe: SafeLoader plus tuples
    except yaml.YAMLError as exc:
        raise VQAError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return DetectorConfig.from_tree(tree, path)


# ----------------------------------------------------------------------------------------------- checkpoints
def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickle of numpy arrays needs, under numpy 1 and numpy 2 module names."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float32(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("collections", "OrderedDict"): dict, ("_codecs", "encode"): _latin1}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles of bytes call (`_codecs.encode(text, 'latin1')`), for latin1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy arrays and plain containers; any other global (os.system, ...) is refused unexecuted."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses global {module}.{name} (only numpy arrays are admitted)") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise VQAError(f"{path}: not a torch state dict nor a pickle of numpy arrays: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise VQAError(f"{path}: the pickle holds no {{'model': {{name: array}}}} mapping")
    return data["model"]


def read_weights(path: Path) -> dict[str, Tensor]:
    """The checkpoint's tensors by name: a torch state dict (weights_only) or a pickle {"model": {name: array}};
    norm `gamma` / `beta` are renamed `weight` / `bias` as the demo does."""
    if not path.is_file():
        raise VQAError(f"{path}: not found (the detector folder needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    with open(path, "rb") as f:
        zip_signature = f.read(4) == b"PK\x03\x04"
    if zip_signature and not zipfile.is_zipfile(path):
        raise VQAError(f"{path}: a torch checkpoint (zip) cut short or damaged: it has no central directory "
                       f"({path.stat().st_size:,} bytes; download it again)")
    if zip_signature:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise VQAError(f"{path}: not a loadable torch state dict: {' '.join(str(exc).split())[:300]}") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data = data["model"]
        if not isinstance(data, dict):
            raise VQAError(f"{path}: holds a {type(data).__name__}, not a state dict")
    else:
        data = _read_pickle(path)
    weights = {}
    for key, value in data.items():
        head, dot, leaf = str(key).rpartition(".")
        name = head + dot + LEGACY_NAMES.get(leaf, leaf)
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "fiu":
                raise VQAError(f"{path}: {key} is an array of {value.dtype}, not numbers")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise VQAError(f"{path}: {key} is a {type(value).__name__}, not an array")
        weights[name] = value
    return weights


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_weights(model: FasterRCNN, weights: dict[str, Tensor], path: Path) -> None:
    """Copy `weights` into `model`; missing, unexpected or misshapen names are one VQAError line.
    BatchNorm's `num_batches_tracked` counters are ignored (inference needs none)."""
    expected = model.state_dict()
    given = {k: v for k, v in weights.items() if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshapen = sorted(f"{k} {tuple(given[k].shape)} not {tuple(expected[k].shape)}"
                       for k in set(given) & set(expected) if given[k].shape != expected[k].shape)
    problems = [f"{what}: {_listing(names)}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if names]
    if problems:
        raise VQAError(f"{path}: does not fit the detector of {CONFIG_NAME}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in given.items()}, strict=True)


def build_model(cfg: DetectorConfig, device: str | torch.device = "cpu") -> FasterRCNN:
    with torch.device(device):
        model = FasterRCNN(cfg)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------- random weights
def _random_array(name: str, shape: tuple[int, ...], rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
    """Random weights that keep 101 layers finite and informative: He-scaled convolutions (the last 1x1 of a
    residual branch and the pixel-scale stem shrunk), norms near the identity, small box deltas."""
    def normal(std: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("cell_anchors.0"):
        return anchors
    if ".norm." in name:
        return {"weight": rng.uniform(0.9, 1.1, shape), "bias": rng.normal(0.0, 0.01, shape),
                "running_mean": rng.normal(0.0, 0.01, shape), "running_var": rng.uniform(0.9, 1.1, shape)
                }[leaf].astype(np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    he = (2.0 / fan_in) ** 0.5
    if "stem" in name:
        return normal(he / 64.0)  # pixels minus means are ~+-100: bring the stem's output to unit scale
    if name.endswith("conv3.weight"):
        return normal(he * 0.25)  # residual branches add ~6 % of the variance per block: 33 blocks stay bounded
    if "objectness_logits" in name or "cls_score" in name or "attr_score" in name:
        return normal(0.3 / fan_in ** 0.5)  # features are ~6 rms: logits spread ~2, no ties, no one-hot softmax
    if "anchor_deltas" in name or "bbox_pred" in name:
        return normal(0.1 / fan_in ** 0.5)
    if "cls_embedding" in name:
        return normal(1.0)
    return normal(he)


def _random_weights(cfg: DetectorConfig, seed: int) -> dict[str, np.ndarray]:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in FasterRCNN(cfg).state_dict().items()}
    anchors = np.asarray(cell_anchors(anchor_sizes(cfg), anchor_ratios(cfg)), np.float32)
    rng = np.random.default_rng(seed)
    return {name: _random_array(name, shape, rng, anchors) for name, shape in shapes.items()}


class _Numpy1Pickler(pickle._Pickler):  # the pure-Python pickler lets one global be written by hand
    """Pickles arrays as numpy 1 did: `numpy.core.multiarray._reconstruct`, whatever numpy is installed."""

    reconstruct = np.ndarray((0,)).__reduce__()[0]

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is self.reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_random_detector(folder: str | Path, form: str = "state_dict", seed: int = 0,
                          **config_overrides: Any) -> Path:
    """Write `config.yaml` (the published values, then `config_overrides`: KEY or SECTION__KEY=value) and
    `pytorch_model.bin` with random weights of the published names and shapes, as a torch state dict or as a
    pickle {"model": {name: array}} written with numpy 1's module names and norm `gamma` / `beta`."""
    if form not in ("state_dict", "pickle"):
        raise ValueError(f"form {form!r} is not 'state_dict' or 'pickle'")
    folder = Path(folder)
    tree = published_config()
    for name, value in config_overrides.items():
        _override(tree, name, value)
    cfg = DetectorConfig.from_tree(tree, folder / CONFIG_NAME)
    weights = _random_weights(cfg, seed)
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        if form == "state_dict":
            torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp)
        else:
            renamed = {k.replace(".norm.weight", ".norm.gamma").replace(".norm.bias", ".norm.beta"): v
                       for k, v in weights.items()}
            buffer = io.BytesIO()
            _Numpy1Pickler(buffer, protocol=4).dump({"model": renamed})
            tmp.write_bytes(buffer.getvalue())
    return folder


# ------------------------------------------------------------------------------------------------ preprocess
def resize_scale(height: int, width: int, shorter: int, longest: int) -> float:
    """The one factor of the resize: s = shorter / min(h, w), or longest / max(h, w) when s x max(h, w) > longest."""
    scale = shorter / min(height, width)
    return longest / max(height, width) if scale * max(height, width) > longest else scale


def resized_size(height: int, width: int, shorter: int, longest: int) -> tuple[int, int]:
    """The demo's ResizeShortestEdge: each side times `resize_scale`, rounded to the nearest pixel (int(x + 0.5))."""
    scale = resize_scale(height, width, shorter, longest)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image: np.ndarray, mean: Tensor, std: Tensor, size: tuple[int, int], device: torch.device) -> Tensor:
    """RGB uint8 H x W x 3 -> BGR float [3, h, w]: (pixel - mean) / std, then bilinear (half-pixel centres, no
    antialiasing: OpenCV's INTER_LINEAR, torch's align_corners=False) to `size`."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).flip(-1).permute(2, 0, 1).float().contiguous()
    x = (x - mean[:, None, None]) / std[:, None, None]
    if tuple(x.shape[1:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


# ------------------------------------------------------------------------------------------------- selections
def _select_caffe(proposals: Tensor, probs: Tensor, attr_logits: Tensor, im_scale: float, count: int,
                  size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """generate_tsv.py: the `count` proposals with the highest max_conf (per-class NMS at 0.3, +1 widths, on
    original-pixel boxes = proposals / im_scale, its one resize factor); their proposal boxes, clamped to the
    original (height, width) `size` (a resized side rounded up maps a little past the image); object = best
    foreground class, attribute = best non-background attribute of the softmax over all attributes (background
    last in this port)."""
    boxes = proposals / im_scale
    max_conf = classwise_max_conf(boxes, probs[:, :-1], CAFFE_NMS)
    keep = torch.sort(max_conf, descending=True, stable=True).indices[:count]
    objects_conf, objects_id = probs[keep, :-1].max(dim=1)
    attrs_conf, attrs_id = attr_logits[keep].softmax(dim=-1)[:, :-1].max(dim=1)
    picked = boxes[keep]
    if size is not None:
        picked = torch.stack([picked[:, 0].clamp(0, size[1]), picked[:, 1].clamp(0, size[0]),
                              picked[:, 2].clamp(0, size[1]), picked[:, 3].clamp(0, size[0])], dim=1)
    return keep, picked, objects_id, objects_conf, attrs_id, attrs_conf


def _select_lxmert(proposals: Tensor, probs: Tensor, deltas: Tensor, attr_logits: Tensor,
                   scale: tuple[Tensor, Tensor],
                   hw: tuple[int, int], weights: list[float], thresholds: list[float], count: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """The demo's selection: each proposal's box regressed for its best foreground class, clipped; class-agnostic
    NMS at each threshold in turn until `count` survive (None if none gives that many); attribute = best of the
    softmax over the non-background attributes."""
    regressed = clip_boxes(apply_deltas(deltas, proposals, weights).reshape(len(proposals), -1, 4), *hw)
    objects_conf, objects_id = probs[:, :-1].max(dim=1)
    column = objects_id if regressed.shape[1] > 1 else torch.zeros_like(objects_id)
    best = regressed[torch.arange(len(proposals), device=proposals.device), column]
    for threshold in thresholds:
        keep = nms(best, objects_conf, threshold, max_keep=count)
        if len(keep) == count:
            attrs_conf, attrs_id = attr_logits[keep, :-1].softmax(dim=-1).max(dim=1)
            return keep, best[keep] * scale[0] / scale[1], objects_id[keep], objects_conf[keep], attrs_id, attrs_conf
    return None


# -------------------------------------------------------------------------------------------------- detector
def _rois(index: int, boxes: Tensor) -> Tensor:
    """RoIs [K, 5] (image index, x1, y1, x2, y2) of image `index`."""
    return torch.cat((torch.full((len(boxes), 1), index, device=boxes.device, dtype=boxes.dtype), boxes), dim=1)


class BottomUpDetector:
    """The hub port of the bottom-up attention detector: `extract` gives `num_boxes` boxes per image."""

    def __init__(self, model: FasterRCNN, cfg: DetectorConfig, device: torch.device, num_boxes: int = NUM_BOXES):
        self.model, self.cfg, self.device, self.num_boxes = model, cfg, device, num_boxes
        self.feature_dim = model.roi_heads.out_channels
        self.mean = torch.tensor(cfg.numbers("MODEL", "PIXEL_MEAN", length=3), device=device)
        self.std = torch.tensor(cfg.numbers("MODEL", "PIXEL_STD", length=3), device=device)
        self.shorter = cfg.integer("INPUT", "MIN_SIZE_TEST")
        self.longest = cfg.integer("INPUT", "MAX_SIZE_TEST")
        self.box_weights = cfg.numbers("ROI_BOX_HEAD", "BBOX_REG_WEIGHTS", length=4)
        self.nms_thresholds = cfg.thresholds("ROI_HEADS", "NMS_THRESH_TEST")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        num_boxes: int = NUM_BOXES) -> BottomUpDetector:
        """Read `folder`/config.yaml and `folder`/pytorch_model.bin (never the network)."""
        folder = Path(folder)
        cfg = read_config(folder)
        device = torch.device(device)
        model = build_model(cfg)
        load_weights(model, read_weights(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME)
        model.fuse()
        return cls(model.to(device), cfg, device, num_boxes)

    @torch.inference_mode()
    def extract(self, images: list[np.ndarray], select: str = "caffe", amp: str | None = None) -> list[dict]:
        """Boxes and features of each image (uint8 H x W x 3 RGB, any sizes); see `_results` for the keys.

        Each image's network work is its own batch: the backbone and RPN on the image, the RoI heads on its <= 300
        RoIs (a 58,800-row product at 14 x 14: large enough to fill a GPU), so results are bit-identical whatever
        images share a call (a resumed run equals an uninterrupted one). `amp="bf16"` runs the network under
        bfloat16 autocast (selection in float32). An image with fewer than `num_boxes` candidates raises
        TooFewBoxes naming every such image (nothing is padded).
        """
        if select not in SELECTIONS:
            raise ValueError(f"select {select!r} is not one of {SELECTIONS}")
        if amp not in AMP_MODES:
            raise ValueError(f"amp {amp!r} is not one of {AMP_MODES}")
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or (
                    image.shape[2] != 3 or min(image.shape[:2]) == 0):
                raise VQAError(f"image {index}: not a uint8 H x W x 3 RGB array ({getattr(image, 'shape', None)})")
        if not images:
            return []
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if amp == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            maps, proposals, hws = self._propose(images)
            heads = [self._heads(m, p) for m, p in zip(maps, proposals)]
        return self._results(images, proposals, hws, heads, select)

    def _propose(self, images: list[np.ndarray]) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Per image: preprocess, backbone, RPN. -> res4 maps [1, C, h, w], proposals [K, 4], resized sizes."""
        maps, proposals, hws = [], [], []
        for image in images:
            hw = resized_size(image.shape[0], image.shape[1], self.shorter, self.longest)
            x = preprocess(image, self.mean, self.std, hw, self.device)
            feature = self.model.backbone(x[None])
            proposals.append(self.model.proposal_generator(feature, *hw))
            maps.append(feature)
            hws.append(hw)
        return maps, proposals, hws

    def _heads(self, feature: Tensor, boxes: Tensor) -> tuple[Tensor, ...]:
        """RoI heads of one image: pooled features, class logits, box deltas, attribute logits (float32)."""
        size = torch.tensor([feature.shape[2:]], device=self.device)
        return tuple(t.float() for t in self.model.roi_heads(feature, size, _rois(0, boxes)))

    def _results(self, images: list[np.ndarray], proposals: list[Tensor], hws: list[tuple[int, int]],
                 parts: list[tuple[Tensor, ...]], select: str) -> list[dict]:
        """One dict per image: boxes float32 [N, 4] (x1, y1, x2, y2, original pixels), features float32 [N, D],
        objects_id int64, objects_conf float32, attrs_id int64, attrs_conf float32 [N], image_h, image_w."""
        results, short, indices = [], [], []
        for index, (image, props, hw) in enumerate(zip(images, proposals, hws)):
            pooled, logits, deltas, attr_logits = parts[index]
            height, width = image.shape[:2]
            scale = (torch.tensor([width, height, width, height], device=self.device, dtype=torch.float32),
                     torch.tensor([hw[1], hw[0], hw[1], hw[0]], device=self.device, dtype=torch.float32))
            probs = logits.softmax(dim=-1)
            picked = None
            if select == "caffe" and len(props) >= self.num_boxes:
                im_scale = resize_scale(height, width, self.shorter, self.longest)
                picked = _select_caffe(props, probs, attr_logits, im_scale, self.num_boxes, (height, width))
            elif select == "lxmert":
                picked = _select_lxmert(props, probs, deltas, attr_logits, scale, hw, self.box_weights,
                                        self.nms_thresholds, self.num_boxes)
            if picked is None:
                short.append(f"image {index} ({height} x {width}): {len(props)} proposals")
                indices.append(index)
                continue
            keep, boxes, objects_id, objects_conf, attrs_id, attrs_conf = picked
            results.append({
                "boxes": boxes.float().cpu().numpy(), "features": pooled[keep].cpu().numpy(),
                "objects_id": objects_id.long().cpu().numpy(), "objects_conf": objects_conf.float().cpu().numpy(),
                "attrs_id": attrs_id.long().cpu().numpy(), "attrs_conf": attrs_conf.float().cpu().numpy(),
                "image_h": int(height), "image_w": int(width)})
        if short:
            raise TooFewBoxes(f"fewer than {self.num_boxes} boxes survive ({select} selection; not padded): "
                              + "; ".join(short), indices)
        return results
