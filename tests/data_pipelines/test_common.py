"""Shared builder helpers: safe paths, Seg-Zero solution strings, image checks."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines import common


def test_safe_join_refuses_escapes(tmp_path):
    (tmp_path / "a").mkdir()
    assert common.safe_join(str(tmp_path), "a/x.jpg") == str((tmp_path / "a" / "x.jpg").resolve())
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "", "a\x00b"):
        with pytest.raises(ValueError, match="unsafe file name|escapes"):
            common.safe_join(str(tmp_path), bad)
    (tmp_path / "a" / "link").symlink_to("/etc")
    with pytest.raises(ValueError, match="escapes"):
        common.safe_join(str(tmp_path), "a/link/passwd")


def test_parse_solution():
    got = common.parse_solution("<box>(10,20),(300,400)</box><points>(50,60),(70,80)</points>")
    np.testing.assert_array_equal(got["bbox"], [10, 20, 300, 400])
    np.testing.assert_array_equal(got["points"], [[50, 60], [70, 80]])
    got = common.parse_solution("<box>(1, 2), (3, 4)</box> <points>(1.5,2),(3,3)</points>")
    np.testing.assert_array_equal(got["points"], [[1.5, 2], [3, 3]])
    for bad in ("<box>(1,2)</box>", "", None):
        with pytest.raises(ValueError, match="solution"):
            common.parse_solution(bad)


def test_load_image_checks_and_reencodes():
    with pytest.raises(OSError, match="here: cannot decode image"):
        common.load_image(b"\x89PNG\r\n\x1a\n truncated", "here")
    buf = io.BytesIO()
    Image.new("RGBA", (5, 4), (1, 2, 3, 255)).save(buf, format="WEBP", lossless=True)
    data, rgb = common.load_image(buf.getvalue(), "webp")
    assert rgb.shape == (4, 5, 3) and data.startswith(b"\x89PNG")
    png = common.encode_png(np.zeros((3, 3, 3), np.uint8))
    assert common.load_image(png, "png")[0] == png
