"""The toy benchmark shows what VQA-CP is for (issue "Toy VQA-CP benchmark", property 3): the baseline BUTD
model loses much of its accuracy from the unshifted split (VQA v2 val2014) to the shifted one (VQA-CP
test), and learned-mixin +H recovers a large part of that loss. One seed, a small toy, a small model."""

from __future__ import annotations

import pytest

from vqa_cp import training
from vqa_cp.toy import ToyConfig, ensure_toy_data

CONFIG = ToyConfig(seed=0, images=1500, test_images=2)
TRAINER = ["--seed", "0", "--epochs", "12", "--num_hid", "128", "--batch_size", "32", "--num_workers", "0",
           "--cache_features", "--inf_lambda", "0"]


@pytest.mark.slow
def test_prior_shift_hurts_the_baseline_and_learned_mixin_recovers(tmp_path):
    data = tmp_path / "toy"
    ensure_toy_data(data, CONFIG, log=lambda _: None)

    def accuracy(name: str, *flags: str) -> float:
        results = training.main(["--data", str(data), "--output", str(tmp_path / name), *TRAINER, *flags])
        split = "val2014" if "--nocp" in flags else "test"
        return results[split]["overall"]

    unshifted = accuracy("nocp_none", "--nocp", "--mode", "none")
    shifted = accuracy("cp_none", "--mode", "none")
    mixin = accuracy("cp_lmh", "--mode", "learned_mixin", "-p", "0.36")
    print(f"official accuracy: VQA v2 val2014 none {unshifted:.2f}, VQA-CP test none {shifted:.2f}, "
          f"learned-mixin +H {mixin:.2f}")
    assert unshifted > 75
    assert unshifted - shifted > 30
    assert mixin - shifted > 20
