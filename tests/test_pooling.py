import pytest
import torch

from arc_encoder.model.pooling import group_sizes, pool, pooled_length

# Every worked example of method.md §2.4 (factor -> group sizes, front to back).
WORKED = [
    (7, 8, [7]),
    (8, 8, [8]),
    (9, 8, [5, 4]),
    (10, 8, [5, 5]),
    (15, 8, [8, 7]),
    (17, 8, [6, 6, 5]),
    (23, 8, [8, 8, 7]),
    (25, 8, [7, 6, 6, 6]),
    (100, 8, [8] * 9 + [7] * 4),
    (155, 8, [8] * 15 + [7] * 5),
    (256, 8, [8] * 32),
    (257, 8, [8] * 26 + [7] * 7),
    (5, 4, [3, 2]),
    (9, 4, [3, 3, 3]),
    (10, 4, [4, 3, 3]),
    (13, 4, [4, 3, 3, 3]),
    (3, 4, [3]),
]


@pytest.mark.parametrize("n,factor,expected", WORKED)
def test_group_sizes_worked_examples(n, factor, expected):
    assert group_sizes(n, factor) == expected
    assert pooled_length(n, factor) == len(expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shorter_than_factor_gives_one_vector(n):
    assert group_sizes(n, 4) == [n]


def test_factor_one_is_identity_grouping():
    assert group_sizes(5, 1) == [1] * 5


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        group_sizes(0, 4)
    with pytest.raises(ValueError):
        group_sizes(5, 0)


def test_mean_and_last_pooling_match_a_loop():
    torch.manual_seed(0)
    lengths = [10, 3, 7]
    h = torch.randn(3, 10, 5)
    for mode in ("mean", "last"):
        pooled, counts, ends = pool(h, lengths, 4, mode)
        assert counts == [3, 1, 2]
        for b, n in enumerate(lengths):
            start = 0
            for j, size in enumerate(group_sizes(n, 4)):
                members = h[b, start : start + size]
                want = members.mean(0) if mode == "mean" else members[-1]
                torch.testing.assert_close(pooled[b, j], want)
                assert ends[b][j] == start + size - 1
                start += size
