"""mask -> bbox + two inscribed-circle points, on shapes whose answer is known."""

import numpy as np
import pytest

from segzero_jax.masks import EmptyMaskError, mask_to_bbox, mask_to_points, mask_to_prompt


def _disc(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_bbox_of_rectangle_is_its_extreme_pixels():
    m = np.zeros((50, 80), bool)
    m[10:21, 30:71] = True
    np.testing.assert_array_equal(mask_to_bbox(m), [30, 10, 70, 20])


def test_two_separate_discs_give_their_centres_largest_first():
    m = _disc((100, 160), 40, 50, 20) | _disc((100, 160), 120, 40, 8)
    pts = mask_to_points(m)
    np.testing.assert_array_equal(pts, [[40, 50], [120, 40]])
    np.testing.assert_array_equal(mask_to_bbox(m), [20, 30, 128, 70])


def test_small_second_disc_beats_ring_of_large_one():
    # The ring of the big disc has radius values up to ~10 but overlaps the first circle.
    m = _disc((120, 200), 50, 60, 40) | _disc((120, 200), 150, 60, 6)
    np.testing.assert_array_equal(mask_to_points(m), [[50, 60], [150, 60]])


def test_dumbbell_points_are_the_two_lobes():
    m = _disc((80, 200), 40, 40, 25) | _disc((80, 200), 150, 40, 18)
    m[37:44, 40:150] = True  # thin bar joining the lobes
    np.testing.assert_array_equal(mask_to_points(m), [[40, 40], [150, 40]])


def test_long_bar_points_are_far_apart_on_the_axis():
    m = np.zeros((40, 200), bool)
    m[10:31, 20:181] = True  # 21 rows: the medial axis is row 20
    (x1, y1), (x2, y2) = mask_to_points(m)
    assert y1 == y2 == 20
    assert abs(x2 - x1) >= 2 * 10  # two disjoint circles of radius ~11 on a 161-pixel bar


def test_single_disc_second_point_inside_and_off_centre():
    m = _disc((64, 64), 32, 32, 15)
    (x1, y1), (x2, y2) = mask_to_points(m)
    assert (x1, y1) == (32, 32)
    assert m[y2, x2]
    assert 5 <= np.hypot(x2 - 32, y2 - 32) <= 10  # about r/2 from the centre


def test_object_touching_border_and_single_pixel():
    m = np.zeros((30, 30), bool)
    m[:, :5] = True  # touches three borders: the centre line is x=2
    assert mask_to_points(m)[0][0] == 2
    one = np.zeros((5, 5), np.uint8)
    one[3, 1] = 1
    prompt = mask_to_prompt(one)
    np.testing.assert_array_equal(prompt.bbox, [1, 3, 1, 3])
    np.testing.assert_array_equal(prompt.points, [[1, 3], [1, 3]])


@pytest.mark.parametrize("seed", range(5))
def test_points_always_on_mask_and_inside_bbox(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((40, 50)) > 0.6
    x1, y1, x2, y2 = mask_to_bbox(m)
    for x, y in mask_to_points(m):
        assert m[y, x] and x1 <= x <= x2 and y1 <= y <= y2


def test_bad_masks_raise_clear_errors():
    with pytest.raises(EmptyMaskError, match="empty"):
        mask_to_prompt(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_bbox(np.ones((2, 4, 4), bool))
