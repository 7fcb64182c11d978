"""The bottom-up attention Faster R-CNN (ResNet-101 C4, Visual Genome) as torch modules, plus its box ops.

Module and buffer names follow the hub port's state dict (`backbone.res4.22.conv3.norm.running_var`, ...) so
its `pytorch_model.bin` loads as it is. Everything is inference only: batch norm is a frozen per-channel
affine folded into the preceding convolution, NMS and RoI pooling are vectorised torch (no torchvision).
`vqa_cp.extraction` reads the checkpoint and picks the boxes; this module holds the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_cp.errors import VQAError

BN_EPS = 1e-5  # torch BatchNorm2d's eps, which the port's frozen norms use
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
FROZEN_NORMS = ("BN", "FROZENBN")
POOLER_TYPES = ("ROIPOOL",)  # the Caffe model's ROIPooling; the port's demo pools with RoIPool whatever the key says
SCALE_CLAMP = math.log(1000.0 / 16)  # detectron2's limit on dw, dh before exp()
GATHER_BYTES = 1 << 29  # RoI pooling gathers at most this many bytes at a time


# ----------------------------------------------------------------------------------------------------- config
def _upper_keys(node: Any, where: str) -> Any:
    """The YAML tree with every mapping key upper-cased (the demo's reader answers both cases)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = str(key).upper()
        if name in out:
            raise VQAError(f"{where}: key {key!r} appears twice (keys ignore case)")
        out[name] = _upper_keys(value, where)
    return out


@dataclass
class DetectorConfig:
    """The keys of the checkpoint's `config.yaml` that the network and the selections read (case-insensitive)."""

    path: str
    tree: dict[str, Any]

    @classmethod
    def from_tree(cls, tree: Any, path: str | Path) -> DetectorConfig:
        if not isinstance(tree, dict):
            raise VQAError(f"{path}: not a YAML mapping of config sections")
        return cls(str(path), _upper_keys(tree, str(path)))

    def get(self, *keys: str) -> Any:
        """The value at SECTION.KEY; a missing key is a VQAError naming it."""
        node: Any = self.tree
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                raise VQAError(f"{self.path}: no key {'.'.join(keys[:depth + 1])} (needed by the detector)")
            node = node[key]
        return node

    def number(self, *keys: str) -> float:
        value = self.get(*keys)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VQAError(f"{self.path}: {'.'.join(keys)} is {value!r}, not a number")
        return float(value)

    def integer(self, *keys: str) -> int:
        value = self.get(*keys)
        if isinstance(value, list) and len(value) == 1:  # detectron2 accepts MIN_SIZE_TEST as a 1-element list
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise VQAError(f"{self.path}: {'.'.join(keys)} is {value!r}, not an integer")
        return value

    def numbers(self, *keys: str, length: int | None = None) -> list[float]:
        value = self.get(*keys)
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value) or (
                length is not None and len(value) != length):
            want = f"{length} numbers" if length else "a list of numbers"
            raise VQAError(f"{self.path}: {'.'.join(keys)} is {value!r}, not {want}")
        return [float(v) for v in value]

    def flag(self, *keys: str) -> bool:
        value = self.get(*keys)
        if not isinstance(value, bool):
            raise VQAError(f"{self.path}: {'.'.join(keys)} is {value!r}, not true/false")
        return value

    def text(self, *keys: str) -> str:
        value = self.get(*keys)
        if not isinstance(value, str):
            raise VQAError(f"{self.path}: {'.'.join(keys)} is {value!r}, not a string")
        return value

    def thresholds(self, *keys: str) -> list[float]:
        """A threshold or a list of them (the demo tries each in turn)."""
        value = self.get(*keys)
        return [self.number(*keys)] if not isinstance(value, list) else self.numbers(*keys)


# ---------------------------------------------------------------------------------------------------- box ops
def box_iou(a: Tensor, b: Tensor, plus_one: bool = False) -> Tensor:
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) -> [N, M].

    Widths are x2 - x1 (+ 1 with `plus_one`, the Caffe convention); inter = max(0, min x2 - max x1 (+1)) * ...;
    IoU = inter / (area_a + area_b - inter).
    """
    one = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + one).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def greedy_keep(suppresses: Tensor) -> Tensor:
    """Greedy NMS decisions from a suppression relation, for any number of leading (batch) dims.

    `suppresses[..., j, i]` is True when box j, if kept, removes box i; it may only hold for j ranked before i.
    Greedy NMS keeps i iff no kept j suppresses it. That recurrence has one solution, reached by iterating
    keep <- not any_j(keep_j and S_ji) from all-True until it stops changing (after at most n + 1 rounds; in
    practice the depth of the longest suppression chain), so the result is exactly the sequential one.
    """
    relation = suppresses.float()  # counts of kept suppressors by a (batched) matrix product: exact integers
    keep = torch.ones(suppresses.shape[:-1], dtype=torch.bool, device=suppresses.device)
    for _ in range(suppresses.shape[-1] + 1):
        new = (keep.float().unsqueeze(-2) @ relation).squeeze(-2) == 0
        if torch.equal(new, keep):
            return new
        keep = new
    raise AssertionError("greedy NMS did not settle")  # unreachable: the relation is acyclic


def nms(boxes: Tensor, scores: Tensor, threshold: float, max_keep: int | None = None,
        plus_one: bool = False) -> Tensor:
    """Greedy NMS: indices of kept boxes, highest score first; a box is removed when IoU > threshold with a
    higher-scored kept box (ties in score: lower index first). With `max_keep`, the first `max_keep` kept.

    Only a prefix of the ranked boxes is examined while it yields `max_keep` survivors (the decisions for the
    first P boxes depend on those P alone), doubling it otherwise: exact, and far cheaper for 6,000 -> 300.
    """
    n = boxes.shape[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order]
    size = n if max_keep is None else min(n, max(4 * max_keep, 256))
    while True:
        head = ranked[:size]
        suppresses = torch.triu(box_iou(head, head, plus_one) > threshold, diagonal=1)
        keep = greedy_keep(suppresses)
        if size == n or int(keep.sum()) >= (max_keep or 0):
            kept = order[:size][keep]
            return kept if max_keep is None else kept[:max_keep]
        size = min(n, 2 * size)


def classwise_max_conf(boxes: Tensor, scores: Tensor, threshold: float, class_chunk: int = 400) -> Tensor:
    """generate_tsv.py's max_conf: for each class, NMS (IoU > threshold, Caffe +1 widths) over all boxes ranked
    by that class's scores; max_conf[i] = max over the classes where box i survived of scores[i, c] (else 0).

    boxes [R, 4], scores [R, C] -> [R]. One IoU matrix serves every class; each class only changes the ranking,
    so the suppression relation of class c is overlap[j, i] and (j ranked before i in c): all classes at once.
    """
    overlap = box_iou(boxes, boxes, plus_one=True) > threshold
    rows = scores.shape[0]
    best = torch.zeros(rows, dtype=scores.dtype, device=scores.device)
    positions = torch.arange(rows, device=scores.device)
    for start in range(0, scores.shape[1], class_chunk):
        by_class = scores[:, start:start + class_chunk].t()  # [c, R]
        order = torch.sort(by_class, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
        before = rank.unsqueeze(2) < rank.unsqueeze(1)  # [c, j, i]: j is ranked before i
        keep = greedy_keep(before & overlap)
        survived = torch.where(keep, by_class, torch.zeros_like(by_class))
        best = torch.maximum(best, survived.amax(dim=0))
    return best


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: list[float]) -> Tensor:
    """detectron2's Box2BoxTransform: deltas [N, 4k] (dx, dy, dw, dh per class) on boxes [N, 4] -> [N, 4k].

    w = x2 - x1, cx = x1 + w/2; cx' = dx/wx * w + cx, w' = exp(min(dw/ww, log(1000/16))) * w; box = cx' -+ w'/2.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=SCALE_CLAMP)
    dh = (deltas[:, 3::4] / wh).clamp(max=SCALE_CLAMP)
    cx = dx * widths[:, None] + ctr_x[:, None]
    cy = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * torch.exp(dw) * widths[:, None]
    half_h = 0.5 * torch.exp(dh) * heights[:, None]
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2).reshape(deltas.shape)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boxes [..., 4] clamped to x in [0, width], y in [0, height] (the port's clip)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


# ------------------------------------------------------------------------------------------------ RoI pooling
def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_pool_bins(rois: Tensor, sizes: Tensor, output: int, scale: float) -> tuple[Tensor, Tensor]:
    """Row and column ranges of Caffe / torchvision RoIPool bins.

    rois [R, 5] (image index, x1, y1, x2, y2 in input pixels); sizes [B, 2] each image's own feature (H, W).
    start = round(x1 * scale), end = round(x2 * scale), n = max(end - start + 1, 1), b = n / output (float32);
    bin p covers [floor(p b), ceil((p + 1) b)) + start, clipped to [0, H] -> rows [R, output, 2], cols likewise.
    """
    coords = _round_half_away(rois[:, 1:].float() * scale).long()
    limits = sizes[rois[:, 0].long()]  # [R, 2]: H, W
    p = torch.arange(output, device=rois.device, dtype=torch.float32)
    ranges = []
    for lo, hi, limit in ((coords[:, 1], coords[:, 3], limits[:, 0]), (coords[:, 0], coords[:, 2], limits[:, 1])):
        span = (hi - lo + 1).clamp(min=1).float() / output
        start = torch.floor(p[None] * span[:, None]).long() + lo[:, None]
        end = torch.ceil((p[None] + 1) * span[:, None]).long() + lo[:, None]
        bound = limit[:, None]
        ranges.append(torch.stack((start.clamp(0).minimum(bound), end.clamp(0).minimum(bound)), dim=2))
    return ranges[0], ranges[1]


def _level(extent: Tensor) -> Tensor:
    """floor(log2(extent)) for extent >= 1."""
    return (torch.frexp(extent.float())[1] - 1).long()


def roi_pool(features: Tensor, sizes: Tensor, rois: Tensor, output: int, scale: float) -> Tensor:
    """Max pooling of every RoI into output x output bins (Caffe ROIPooling / torchvision RoIPool); empty bins 0.

    features [B, C, H, W] (images padded to a common size: a bin never reads past its image's own `sizes`),
    rois [R, 5] -> [R, C, output, output] (a channels-last view). A 2-D sparse table of maxima over windows of
    2^a x 2^b feature pixels answers each bin with 4 look-ups (max is exact, so this equals a brute-force max).
    """
    rows, cols = roi_pool_bins(rois, sizes, output, scale)
    count = rois.shape[0]
    batch, channels, height, width = features.shape
    levels_h = int(_level((rows[..., 1] - rows[..., 0]).clamp(min=1).max()).item()) + 1 if count else 1
    levels_w = int(_level((cols[..., 1] - cols[..., 0]).clamp(min=1).max()).item()) + 1 if count else 1
    by_rows = [features.permute(0, 2, 3, 1)]  # channels last [B, H, W, C]; entry a: max over 2^a rows
    for a in range(1, levels_h):
        prev, step = by_rows[-1], 1 << (a - 1)
        by_rows.append(torch.maximum(prev, F.pad(prev[:, step:], (0, 0, 0, 0, 0, step))))
    table = []  # entry a * levels_w + b: max over 2^a rows x 2^b columns (padding is never read: see below)
    for prev in by_rows:
        table.append(prev)
        for b in range(1, levels_w):
            step = 1 << (b - 1)
            prev = torch.maximum(prev, F.pad(prev[:, :, step:], (0, 0, 0, step)))
            table.append(prev)
    flat = torch.stack(table).reshape(-1, channels)  # [(L, B, H, W), C]

    out = features.new_empty((count, output, output, channels))
    per_roi = output * output * 4 * channels * features.element_size()
    chunk = max(1, GATHER_BYTES // per_roi)
    for s in range(0, count, chunk):
        r, c, img = rows[s:s + chunk], cols[s:s + chunk], rois[s:s + chunk, 0].long()
        h0, h1 = r[:, :, None, 0], r[:, :, None, 1]  # [n, P, 1]
        w0, w1 = c[:, None, :, 0], c[:, None, :, 1]  # [n, 1, P]
        empty = (h1 <= h0) | (w1 <= w0)  # [n, P, P]
        kh = _level((h1 - h0).clamp(min=1))
        kw = _level((w1 - w0).clamp(min=1))
        level = kh * levels_w + kw  # [n, P, P]
        base = (level * batch + img[:, None, None]) * height
        # a window of 2^k inside [start, end) read at start and at end - 2^k: never past the image's own size
        ys = torch.stack((h0, h1 - torch.pow(2, kh)), dim=-1).clamp(0, height - 1)  # [n, P, 1, 2]
        xs = torch.stack((w0, w1 - torch.pow(2, kw)), dim=-1).clamp(0, width - 1)  # [n, 1, P, 2]
        idx = ((base[..., None, None] + ys[..., :, None]) * width + xs[..., None, :])  # [n, P, P, 2, 2]
        vals = flat[idx.reshape(-1)].reshape(*idx.shape, channels).amax(dim=(3, 4))
        out[s:s + chunk] = vals.masked_fill(empty[..., None], 0)
    return out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------- modules
class FrozenNorm(nn.Module):
    """Batch norm frozen into y = (x - mean) / sqrt(var + eps) * weight + bias (state-dict names of BatchNorm2d)."""

    def __init__(self, channels: int):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.zeros(channels))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight / torch.sqrt(self.running_var + BN_EPS)
        return scale, self.bias - self.running_mean * scale


class ConvNorm(nn.Module):
    """A bias-free convolution and its frozen norm, folded into one conv with bias by `fuse()`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1):
        super().__init__()
        self.register_buffer("weight", torch.zeros(cout, cin // groups, kernel, kernel))
        self.norm = FrozenNorm(cout)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    def fuse(self) -> None:
        """conv(x, W) * s + t = conv(x, W * s) + t."""
        scale, shift = self.norm.scale_shift()
        self.fused_weight = self.weight * scale[:, None, None, None]
        self.fused_bias = shift

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.fused_weight, self.fused_bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the width changes; stride in the 1x1 (MSRA/Caffe)
    or in the 3x3, as STRIDE_IN_1X1 says."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, stride_in_1x1: bool, groups: int,
                 dilation: int = 1):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, mid, 1, stride=s1)
        self.conv2 = ConvNorm(mid, mid, 3, stride=s3, padding=dilation, dilation=dilation, groups=groups)
        self.conv3 = ConvNorm(mid, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class Stem(nn.Module):
    def __init__(self, out_channels: int, caffe_maxpool: bool):
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3)
        self.caffe_maxpool = caffe_maxpool

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        if self.caffe_maxpool:  # Caffe's pooling: no padding, ceil mode
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Backbone(nn.Module):
    """Stem + res2..res4 (C4): stride 16, 4 x RES2_OUT_CHANNELS channels out."""

    def __init__(self, cfg: DetectorConfig, blocks: tuple[int, ...]):
        super().__init__()
        width = cfg.integer("RESNETS", "NUM_GROUPS") * cfg.integer("RESNETS", "WIDTH_PER_GROUP")
        cin, cout = cfg.integer("RESNETS", "STEM_OUT_CHANNELS"), cfg.integer("RESNETS", "RES2_OUT_CHANNELS")
        self.stem = Stem(cin, cfg.flag("MODEL", "MAX_POOL"))
        for index, name in enumerate(("res2", "res3", "res4")):
            stage = make_stage(cfg, blocks[index], cin, cout, width, 1 if index == 0 else 2)
            self.add_module(name, stage)
            cin, cout, width = cout, cout * 2, width * 2
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.res4(self.res3(self.res2(self.stem(x))))


def make_stage(cfg: DetectorConfig, count: int, cin: int, cout: int, mid: int, stride: int,
               dilation: int = 1) -> nn.Sequential:
    stride_in_1x1 = cfg.flag("RESNETS", "STRIDE_IN_1X1")
    groups = cfg.integer("RESNETS", "NUM_GROUPS")
    return nn.Sequential(*(Bottleneck(cin if i == 0 else cout, cout, mid, stride if i == 0 else 1, stride_in_1x1,
                                      groups, dilation) for i in range(count)))


class AnchorGenerator(nn.Module):
    def __init__(self, count: int):
        super().__init__()
        self.cell_anchors = nn.ParameterList([nn.Parameter(torch.zeros(count, 4), requires_grad=False)])

    def grid(self, height: int, width: int, stride: int, offset: float) -> Tensor:
        """Anchors [H * W * A, 4], ordered (y, x, anchor): cell anchors shifted by (offset + i) * stride."""
        cell = self.cell_anchors[0]
        xs = torch.arange(width, device=cell.device, dtype=torch.float32) * stride + offset * stride
        ys = torch.arange(height, device=cell.device, dtype=torch.float32) * stride + offset * stride
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
        return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    def __init__(self, cin: int, hidden: int, anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, anchors * 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class ProposalGenerator(nn.Module):
    """The RPN at test time: top PRE_NMS_TOPK_TEST anchors by objectness, decoded, clipped, sides <= MIN_SIZE
    dropped, NMS at RPN.NMS_THRESH, the first POST_NMS_TOPK_TEST kept (highest objectness first)."""

    def __init__(self, cfg: DetectorConfig, cin: int, anchors: int, stride: int):
        super().__init__()
        hidden = cfg.integer("PROPOSAL_GENERATOR", "HIDDEN_CHANNELS")
        self.rpn_head = RPNHead(cin, cin if hidden == -1 else hidden, anchors)
        self.anchor_generator = AnchorGenerator(anchors)
        self.stride = stride
        self.offset = cfg.number("ANCHOR_GENERATOR", "OFFSET")
        self.pre_topk = cfg.integer("RPN", "PRE_NMS_TOPK_TEST")
        self.post_topk = cfg.integer("RPN", "POST_NMS_TOPK_TEST")
        self.nms_thresh = cfg.number("RPN", "NMS_THRESH")
        self.min_size = cfg.number("PROPOSAL_GENERATOR", "MIN_SIZE")
        self.weights = cfg.numbers("RPN", "BBOX_REG_WEIGHTS", length=4)

    def forward(self, feature: Tensor, height: int, width: int) -> Tensor:
        """feature [1, C, h, w] of one image of `height` x `width` input pixels -> proposals [K, 4] (K <= post)."""
        logits, deltas = self.rpn_head(feature)
        _, anchors, rows, cols = logits.shape
        logits = logits.float().permute(0, 2, 3, 1).reshape(-1)
        deltas = deltas.float().reshape(anchors, 4, rows, cols).permute(2, 3, 0, 1).reshape(-1, 4)
        top = torch.sort(logits, descending=True, stable=True).indices[:self.pre_topk]
        grid = self.anchor_generator.grid(rows, cols, self.stride, self.offset)
        boxes = clip_boxes(apply_deltas(deltas[top], grid[top], self.weights), height, width)
        sides = boxes[:, 2:] - boxes[:, :2]
        big = (sides > self.min_size).all(dim=1)
        boxes, scores = boxes[big], logits[top][big]
        return boxes[nms(boxes, scores, self.nms_thresh, max_keep=self.post_topk)]


class BoxPredictor(nn.Module):
    """Class scores (NUM_CLASSES + 1, background last), class-specific deltas, and the attribute head that
    reads the feature concatenated with the embedding of the best class (background included, as the port)."""

    def __init__(self, dim: int, classes: int, attrs: int, agnostic: bool):
        super().__init__()
        self.cls_score = nn.Linear(dim, classes + 1)
        self.bbox_pred = nn.Linear(dim, 4 * (1 if agnostic else classes))
        self.cls_embedding = nn.Embedding(classes + 1, dim // 8)
        self.fc_attr = nn.Linear(dim + dim // 8, dim // 4)
        self.attr_score = nn.Linear(dim // 4, attrs + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = self.cls_score(x)
        deltas = self.bbox_pred(x)
        embedded = self.cls_embedding(scores.argmax(dim=-1))
        attrs = self.attr_score(F.relu(self.fc_attr(torch.cat((x, embedded.to(x.dtype)), dim=-1))))
        return scores, deltas, attrs


class RoIHeads(nn.Module):
    """RoI pooling at 1/16 on res4, res5 (first block at stride 1 with dilation 2 unless RES5HALVE), the spatial
    mean (the 2,048-d feature) and the predictors."""

    def __init__(self, cfg: DetectorConfig, cin: int, blocks: int, stride: int):
        super().__init__()
        pooler = cfg.text("ROI_BOX_HEAD", "POOLER_TYPE") if "POOLER_TYPE" in cfg.get("ROI_BOX_HEAD") else "ROIPool"
        if pooler.upper() not in POOLER_TYPES:
            raise VQAError(f"{cfg.path}: ROI_BOX_HEAD.POOLER_TYPE {pooler!r} is not implemented (only ROIPool)")
        if not cfg.flag("ROI_BOX_HEAD", "ATTR"):
            raise VQAError(f"{cfg.path}: ROI_BOX_HEAD.ATTR is false; the extractor needs the attribute head")
        self.resolution = cfg.integer("ROI_BOX_HEAD", "POOLER_RESOLUTION")
        self.scale = 1.0 / stride
        halve = cfg.flag("ROI_BOX_HEAD", "RES5HALVE")
        mid = cfg.integer("RESNETS", "NUM_GROUPS") * cfg.integer("RESNETS", "WIDTH_PER_GROUP") * 8
        self.res5 = make_stage(cfg, blocks, cin, cin * 2, mid, 2 if halve else 1, 1 if halve else 2)
        self.out_channels = cin * 2
        self.box_predictor = BoxPredictor(self.out_channels, cfg.integer("ROI_HEADS", "NUM_CLASSES"),
                                          cfg.integer("ROI_BOX_HEAD", "NUM_ATTRS"),
                                          cfg.flag("ROI_BOX_HEAD", "CLS_AGNOSTIC_BBOX_REG"))

    def forward(self, features: Tensor, sizes: Tensor, rois: Tensor, chunk: int = 2048
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> pooled features [R, 2048], class logits, box deltas, attribute logits."""
        pooled = []
        for start in range(0, rois.shape[0], chunk):
            x = roi_pool(features, sizes, rois[start:start + chunk], self.resolution, self.scale)
            if x.device.type == "cpu":  # CPU convolutions are slower on channels-last views
                x = x.contiguous()
            pooled.append(self.res5(x).mean(dim=(2, 3)))
        feature = torch.cat(pooled)
        return (feature, *self.box_predictor(feature))


class FasterRCNN(nn.Module):
    """backbone + proposal_generator + roi_heads, named as the port's GeneralizedRCNN."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        depth = cfg.integer("RESNETS", "DEPTH")
        if depth not in STAGE_BLOCKS:
            raise VQAError(f"{cfg.path}: RESNETS.DEPTH {depth} is not one of {sorted(STAGE_BLOCKS)}")
        norm = cfg.text("RESNETS", "NORM")
        if norm.upper() not in FROZEN_NORMS:
            raise VQAError(f"{cfg.path}: RESNETS.NORM {norm!r} is not a frozen batch norm (BN)")
        for keys in (("RESNETS", "OUT_FEATURES"), ("RPN", "IN_FEATURES"), ("ROI_HEADS", "IN_FEATURES")):
            if [str(v).lower() for v in cfg.get(*keys)] != ["res4"]:
                raise VQAError(f"{cfg.path}: {'.'.join(keys)} is {cfg.get(*keys)!r}; only the C4 model (res4)")
        blocks = STAGE_BLOCKS[depth]
        self.stride = 16
        self.backbone = Backbone(cfg, blocks)
        self.proposal_generator = ProposalGenerator(cfg, self.backbone.out_channels, count_anchors(cfg), self.stride)
        self.roi_heads = RoIHeads(cfg, self.backbone.out_channels, blocks[3], self.stride)

    def fuse(self) -> None:
        """Fold every frozen norm into its convolution (after the weights are loaded)."""
        for module in self.modules():
            if isinstance(module, ConvNorm):
                module.fuse()


def anchor_sizes(cfg: DetectorConfig) -> list[float]:
    sizes = cfg.get("ANCHOR_GENERATOR", "SIZES")
    flat = sizes[0] if isinstance(sizes, list) and sizes and isinstance(sizes[0], list) else sizes
    if not isinstance(flat, list) or not all(isinstance(v, (int, float)) for v in flat) or (
            isinstance(sizes[0], list) and len(sizes) != 1):
        raise VQAError(f"{cfg.path}: ANCHOR_GENERATOR.SIZES is {sizes!r}, not one list of sizes (one level)")
    return [float(v) for v in flat]


def anchor_ratios(cfg: DetectorConfig) -> list[float]:
    ratios = cfg.get("ANCHOR_GENERATOR", "ASPECT_RATIOS")
    flat = ratios[0] if isinstance(ratios, list) and ratios and isinstance(ratios[0], list) else ratios
    if not isinstance(flat, list) or not all(isinstance(v, (int, float)) for v in flat):
        raise VQAError(f"{cfg.path}: ANCHOR_GENERATOR.ASPECT_RATIOS is {ratios!r}, not a list of ratios")
    return [float(v) for v in flat]


def cell_anchors(sizes: list[float], ratios: list[float]) -> list[list[float]]:
    """detectron2's cell anchors: for each size s and ratio r, w = sqrt(s^2 / r), h = r w, centred on 0."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return out


def count_anchors(cfg: DetectorConfig) -> int:
    return len(anchor_sizes(cfg)) * len(anchor_ratios(cfg))

