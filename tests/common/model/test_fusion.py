import numpy as np
import pytest

from common.model.fusion import fuse, l2_normalize


def test_fuse_is_normalized_weighted_sum_of_normalized_parts():
    t = np.array([3.0, 0.0], dtype=np.float32)
    i = np.array([0.0, 2.0], dtype=np.float32)
    # normalized parts (1,0) and (0,1); 0.75/0.25 mix -> (0.75, 0.25) / sqrt(0.625)
    out = fuse(t, i, text_weight=0.75, image_weight=0.25)
    np.testing.assert_allclose(out, np.array([0.75, 0.25]) / np.sqrt(0.625), rtol=1e-6)


def test_fuse_single_part_and_per_row_weights():
    t = l2_normalize(np.array([[1.0, 1.0], [1.0, 0.0]]))
    i = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(fuse(t, None), t, rtol=1e-6)
    out = fuse(t, i, text_weight=0.5, image_weight=np.array([0.5, 0.0]))
    np.testing.assert_allclose(out[1], [1.0, 0.0], rtol=1e-6)  # row 1 has no photo
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)


def test_fuse_rejects_nothing_negative_and_zero_weights():
    v = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match="text vector, an image vector"):
        fuse(None, None)
    with pytest.raises(ValueError, match=">= 0"):
        fuse(v, v, text_weight=-1.0)
    with pytest.raises(ValueError, match="all zero"):
        fuse(v, v, text_weight=0.0, image_weight=0.0)
