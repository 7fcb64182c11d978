"""EpochSampler: per-epoch reshuffle, rank split equal to one big batch, resume by skipping."""

from vqa_cp.distributed import EpochSampler


def test_same_seed_epoch_same_order_and_reshuffle():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(0)
    b.set_epoch(0)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) != list(b)


def test_two_ranks_cover_the_single_process_batches():
    single = EpochSampler(40, seed=1)
    single.set_epoch(2)
    r0, r1 = EpochSampler(40, seed=1, rank=0, world=2), EpochSampler(40, seed=1, rank=1, world=2)
    r0.set_epoch(2)
    r1.set_epoch(2)
    full, i0, i1 = list(single), list(r0), list(r1)
    batch = 8
    for i in range(40 // batch):
        assert sorted(full[i * batch:(i + 1) * batch]) == sorted(
            i0[i * batch // 2:(i + 1) * batch // 2] + i1[i * batch // 2:(i + 1) * batch // 2])


def test_skip_resumes_mid_epoch():
    s = EpochSampler(30, seed=5)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, skip=12)
    assert list(s) == full[12:]
    assert len(s) == 18


def test_uneven_split_pads_like_distributed_sampler():
    r0, r1 = EpochSampler(5, seed=0, rank=0, world=2), EpochSampler(5, seed=0, rank=1, world=2)
    r0.set_epoch(0)
    r1.set_epoch(0)
    assert len(r0) == len(r1) == 3
    assert set(r0) | set(r1) == set(range(5))
