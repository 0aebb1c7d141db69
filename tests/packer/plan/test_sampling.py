import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from packer.config import PackingConfig
from packer.index.table import image_keys
from packer.plan.sampling import (
    kept_counts,
    kept_token_indices,
    plan_images,
    sample_resolutions,
    target_grids,
)


def test_draws_depend_only_on_seed_epoch_and_image():
    config = PackingConfig()
    keys = image_keys([f"img{i}" for i in range(50)])
    a = plan_images(config, 3, keys, np.full(50, 640), np.full(50, 480))
    perm = np.random.default_rng(0).permutation(50)
    b = plan_images(config, 3, keys[perm], np.full(50, 640), np.full(50, 480))
    for name in a:
        np.testing.assert_array_equal(a[name][perm], b[name])
    c = plan_images(config, 4, keys, np.full(50, 640), np.full(50, 480))
    assert not np.array_equal(a["grid_h"] * a["grid_w"], c["grid_h"] * c["grid_w"])


def test_truncnorm_favours_low_resolutions_within_range():
    keys = image_keys([str(i) for i in range(4000)])
    uniform = sample_resolutions(PackingConfig(), 0, keys)
    truncnorm = sample_resolutions(PackingConfig(res_dist="truncnorm"), 0, keys)
    for r in (uniform, truncnorm):
        assert r.min() >= 64 and r.max() <= 384
    assert truncnorm.mean() < uniform.mean() - 20


def test_worked_example_600x400_at_256():
    area = PackingConfig()
    gh, gw = target_grids(area, np.array([600]), np.array([400]), np.array([256.0]))
    assert (gh[0], gw[0]) == (13, 20)
    side = PackingConfig(res_mode="side")
    gh, gw = target_grids(side, np.array([600]), np.array([400]), np.array([256.0]))
    assert (gh[0], gw[0]) == (11, 16)


@given(
    width=st.integers(1, 6000),
    height=st.integers(1, 6000),
    res=st.floats(64, 384),
    mode=st.sampled_from(["area", "side"]),
)
def test_grids_keep_aspect_within_one_patch_and_fit_the_cap(width, height, res, mode):
    config = PackingConfig(res_mode=mode)
    gh, gw = target_grids(config, np.array([width]), np.array([height]), np.array([res]))
    gh, gw = int(gh[0]), int(gw[0])
    assert gh >= 1 and gw >= 1
    assert gh * gw <= config.max_tokens_per_image
    capped = max(gh, gw) == 1 or gh * gw + max(gh, gw) > config.max_tokens_per_image
    if not capped:
        # The grid's aspect ratio matches the image's to within one patch on a side.
        assert abs(gw - gh * width / height) <= 1.0 or abs(gh - gw * height / width) <= 1.0


def test_thin_strip_is_capped_not_dropped():
    config = PackingConfig()
    gh, gw = target_grids(config, np.array([5000]), np.array([1]), np.array([384.0]))
    assert (gh[0], gw[0]) == (1, 576)


def test_kept_tokens_sorted_unique_and_deterministic():
    config = PackingConfig(token_drop="constant", drop_rate=0.5)
    first = kept_token_indices(config, 0, 1234, 100, 50)
    assert len(first) == 50 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, kept_token_indices(config, 0, 1234, 100, 50))
    assert kept_counts(np.array([10, 1]), np.array([0.5, 0.9])).tolist() == [5, 1]


def test_resolution_dependent_drop_grows_with_resolution():
    config = PackingConfig(token_drop="resolution", drop_rate=0.5, drop_min_rate=0.0)
    keys = image_keys([str(i) for i in range(500)])
    draws = plan_images(config, 0, keys, np.full(500, 500), np.full(500, 500))
    tokens = draws["grid_h"] * draws["grid_w"]
    kept_fraction = draws["num_kept"] / tokens
    big, small = tokens > 400, tokens < 50
    assert kept_fraction[big].mean() < kept_fraction[small].mean()
