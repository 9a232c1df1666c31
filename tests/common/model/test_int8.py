import numpy as np
import pytest
import torch
from torch import nn

from common.model.int8 import Int8Linear, module_bytes, quantize_linears
from common.model.precision import CALIBRATION_QUERIES
from common.model.student import QueryStudent, student_from_teacher

QUERIES = [
    "black casual shoes",
    "women watches",
    "blue denim jeans for men with a slim fit and five pockets",
    "red handbag",
]
# Every scale is fixed and int8 products are summed in int32, so a row's result does not
# depend on the other rows (exactly: the layer test); the float32 parts (layer norm,
# attention) may differ in summation order between a batch and a single row, as in float32,
# and now and then that flips one int8 rounding: on an AMD EPYC (2026-12-07) "red handbag"
# alone and in this batch differed by 3.9e-3 (cosine 0.9997), the other three by < 1e-7.
BATCH_TOLERANCE = 1e-5
FLIPPED_TOLERANCE = 1e-2


def _rows_rounded(x: torch.Tensor) -> torch.Tensor:
    """Each row to int8 at its own scale, and back."""
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(x / scale) * scale


def test_int8_linear_is_the_linear_of_its_rounded_weights_and_rows():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    low, high = torch.full((64,), -3.0), torch.full((64,), 2.0)
    q = Int8Linear(linear, low=low, high=high, smoothing=None)
    w = linear.weight.detach()
    w_scale = w.abs().amax(dim=1, keepdim=True) / 127
    w_rounded = torch.round(w / w_scale) * w_scale
    x = torch.randn(3, 5, 64)
    want = nn.functional.linear(_rows_rounded(x), w_rounded, linear.bias).detach()
    torch.testing.assert_close(q(x), want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(q(x), linear(x).detach(), atol=1e-3)  # rounding happened
    torch.testing.assert_close(q(x[:1, :2]), q(x)[:1, :2], atol=1e-6, rtol=0)  # rows alone
    x[1] *= 100  # a loud row elsewhere in the batch changes nothing for the others
    torch.testing.assert_close(q(x)[0], want[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="low <= high"):
        Int8Linear(linear, low=high, high=low)
    with pytest.raises(ValueError, match="one value per input"):
        Int8Linear(linear, low=low[:3], high=high[:3])


def test_smoothing_keeps_the_product_and_tames_an_outlier_channel():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(200, 64)
    x[:, 7] *= 60  # one outlier channel, as in a transformer's residual stream
    low, high = x.amin(dim=0), x.amax(dim=0)
    exact = linear(x).detach()
    plain = Int8Linear(linear, low=low, high=high, smoothing=None)(x)
    smooth = Int8Linear(linear, low=low, high=high)(x)
    assert (smooth - exact).abs().mean() < 0.5 * (plain - exact).abs().mean()


def test_quantize_linears_calibrates_a_copy_skips_and_refuses_bad_modules():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    x = torch.randn(16, 8)
    out = quantize_linears(model, lambda m: m(x), skip=("2",))
    assert isinstance(out[0], Int8Linear) and isinstance(out[2][0], nn.Linear)
    assert isinstance(model[0], nn.Linear)  # the original is unchanged
    err = (out[0](x) - model[0](x)).abs().max().item()  # calibrated on x: nothing clipped
    assert 0 < err < 0.05
    assert module_bytes(out) < module_bytes(model)
    with pytest.raises(ValueError, match="nn.Linear"):
        quantize_linears(nn.Sequential(nn.ReLU()), lambda m: None)
    with pytest.raises(ValueError, match="calibration"):
        quantize_linears(model, lambda m: None)


def _batch_independent_and_close(float_tower, int8_tower) -> None:
    batch = int8_tower.encode_text(QUERIES)
    alone = np.stack([int8_tower.encode_text([text])[0] for text in QUERIES])
    reordered = int8_tower.encode_text(QUERIES[::-1])[::-1]
    for other in (alone, reordered):
        gap = np.abs(other - batch).max(axis=1)
        assert np.sum(gap <= BATCH_TOLERANCE) >= len(QUERIES) - 1  # at most one flip
        assert gap.max() <= FLIPPED_TOLERANCE and np.sum(other * batch, axis=1).min() > 0.999
    full = float_tower.encode_text(QUERIES)
    assert not np.allclose(batch, full, atol=1e-4)  # int8 really changed the vectors ...
    assert np.min(np.sum(batch * full, axis=1)) > 0.99  # ... and stays close to float32


def test_int8_minilm_is_batch_independent_and_close_to_float32(untrained_encoder):
    int8 = untrained_encoder.with_int8_text(CALIBRATION_QUERIES)
    assert int8.text_precision == "int8" and untrained_encoder.text_precision == "float32"
    assert int8.model.visual is not untrained_encoder.model.visual
    assert not any(isinstance(m, Int8Linear) for m in int8.model.visual.modules())
    _batch_independent_and_close(untrained_encoder, int8)


def test_int8_student_is_batch_independent_and_smaller(untrained_encoder):
    bert = untrained_encoder.model.text.transformer
    student = QueryStudent(student_from_teacher(bert, [0, 5], 768), version="s")
    int8 = student.with_int8_text(CALIBRATION_QUERIES)
    assert int8.text_precision == "int8" and int8.version == student.version
    assert int8.size_bytes < student.size_bytes
    _batch_independent_and_close(student, int8)
