"""Shared fixtures: one small processed toy dataset for the whole test session."""

from pathlib import Path

import pytest

from vqa_cp.toy import ToyConfig, ensure_toy_data


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A processed toy VQA-CP dataset: 400 images, 32-d features, 12 boxes (fast to train on)."""
    data = tmp_path_factory.mktemp("toy") / "data"
    config = ToyConfig(seed=7, images=400, boxes=12, feature_dim=32, questions_per_image=4)
    ensure_toy_data(data, config, log=lambda message: None)
    return data


def tiny_args(data: Path, output: Path, *extra: str) -> list[str]:
    """main.py flags for a fast CPU run on the toy fixture."""
    return ["--data", str(data), "--output", str(output), "--num_hid", "32", "--batch_size", "64",
            "--epochs", "1", "--num_workers", "0", *extra]
