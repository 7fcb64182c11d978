"""Test doubles for the extraction command: a stand-in detector with BottomUpDetector's API that returns
deterministic arrays computed from the pixels, image writers, and a runner for subprocesses."""

from __future__ import annotations

import io
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from vqa_cp.errors import VQAError

FAKE_BOXES = 4
FAKE_DIM = 6
FAKE_MIN_SIDE = 8  # narrower images are refused as the detector refuses one with fewer boxes than asked for


class FakeTooFewBoxes(VQAError):
    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = indices


def fake_output(image: np.ndarray, select: str = "caffe") -> dict:
    """The quadrants of the image as boxes; a quadrant's feature: its mean R, G, B / 255 and their squares
    (negated for select="lxmert", so that the two selections differ)."""
    h, w = image.shape[:2]
    cuts = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
    features = []
    for x1, y1, x2, y2 in cuts:
        mean = image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0) / 255.0
        features.append(np.concatenate([mean, mean ** 2]))
    features = np.array(features, dtype=np.float32) * (-1 if select == "lxmert" else 1)
    return {"boxes": np.array(cuts, dtype=np.float32), "features": features, "image_h": h, "image_w": w,
            "objects_id": np.zeros(FAKE_BOXES, np.int64), "objects_conf": np.ones(FAKE_BOXES, np.float32),
            "attrs_id": np.zeros(FAKE_BOXES, np.int64), "attrs_conf": np.ones(FAKE_BOXES, np.float32)}


class FakeDetector:
    num_boxes = FAKE_BOXES
    feature_dim = FAKE_DIM

    def __init__(self, delay: float = 0.0, count_file: str | None = None) -> None:
        self.delay, self.count_file = delay, count_file
        self.images = 0  # images seen by this instance
        self.amps: set[str | None] = set()

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu") -> FakeDetector:
        """FAKE_DETECTOR_DELAY (seconds an image) and FAKE_DETECTOR_COUNT (a file: one line per call, its
        image count) come from the environment, so that subprocesses can be slowed down and counted."""
        if not (Path(folder) / "pytorch_model.bin").is_file():
            raise VQAError(f"{folder}: no pytorch_model.bin")
        return cls(float(os.environ.get("FAKE_DETECTOR_DELAY", "0")), os.environ.get("FAKE_DETECTOR_COUNT"))

    def extract(self, images: list[np.ndarray], select: str = "caffe", amp: str | None = None) -> list[dict]:
        self.images += len(images)
        self.amps.add(amp)
        if self.count_file:
            with open(self.count_file, "a") as f:
                f.write(f"{len(images)}\n")
        time.sleep(self.delay * len(images))
        narrow = [j for j, image in enumerate(images) if image.shape[1] < FAKE_MIN_SIDE]
        if narrow:
            raise FakeTooFewBoxes(f"{len(narrow)} images gave fewer than {FAKE_BOXES} boxes", narrow)
        return [fake_output(image, select) for image in images]


def fake_weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model: fake\n")
    (folder / "pytorch_model.bin").write_bytes(bytes(range(256)) * 4)
    return folder


def coco_name(image_id: int, split: str = "train2014", suffix: str = ".jpg") -> str:
    return f"COCO_{split}_{image_id:012d}{suffix}"


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG" if image.mode in ("RGB", "L", "CMYK") else "PNG", quality=quality)
    return out.getvalue()


def random_image(rng: np.random.Generator, w: int | None = None, h: int | None = None) -> Image.Image:
    w = w or int(rng.integers(12, 40))
    h = h or int(rng.integers(12, 40))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def coco_zip(path: Path, ids, split: str = "train2014", seed: int = 0) -> Path:
    """A zip laid out as COCO's train2014.zip: `train2014/COCO_train2014_<id>.jpg`, random pixels."""
    rng = np.random.default_rng(seed)
    return write_zip(path, {f"{split}/{coco_name(i, split)}": jpeg_bytes(random_image(rng)) for i in ids})


def decoded(data: bytes) -> np.ndarray:
    """What a plain PIL decode gives (the independent reference of the tests)."""
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


if __name__ == "__main__":  # the command with the fake detector, for subprocess and torchrun tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vqa_cp.distributed import under_torchrun
    from vqa_cp.errors import run_cli
    from vqa_cp.image_features import main

    run_cli(lambda: main(sys.argv[1:], make_detector=FakeDetector.from_pretrained))
    if under_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
