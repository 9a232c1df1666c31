import numpy as np
import pytest
import torch
from torch import nn

from common.model.bfloat16 import BFloat16Linear, bfloat16_linears
from common.model.int8 import module_bytes
from common.model.student import QueryStudent, student_from_teacher

QUERIES = [
    "black casual shoes",
    "women watches",
    "blue denim jeans for men with a slim fit and five pockets",
    "red handbag",
]


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def test_bfloat16_linear_is_the_rounded_product_of_rounded_weights_and_inputs_plus_bias():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    fast = BFloat16Linear(linear)
    assert fast.weight.dtype == torch.bfloat16 and fast.bias.dtype == torch.float32
    x = torch.randn(3, 5, 64)
    # the product is rounded to bfloat16 (oneDNN's output type), the bias added in float32
    want = _bf16(_bf16(x) @ _bf16(linear.weight.detach()).T) + linear.bias.detach()
    torch.testing.assert_close(fast(x), want, atol=1e-5, rtol=1e-5)
    assert fast(x).dtype == torch.float32
    assert not torch.allclose(fast(x), linear(x).detach(), atol=1e-5)  # rounding happened
    torch.testing.assert_close(fast(x[:1, :2]), fast(x)[:1, :2], atol=1e-6, rtol=0)
    no_bias = BFloat16Linear(nn.Linear(64, 8, bias=False))
    assert no_bias.bias is None and no_bias(x).shape == (3, 5, 8)


def test_bfloat16_linears_converts_a_copy_skips_and_refuses_modules_without_linears():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    out = bfloat16_linears(model, skip=("2",))
    assert isinstance(out[0], BFloat16Linear) and isinstance(out[2][0], nn.Linear)
    assert isinstance(model[0], nn.Linear)  # the original is unchanged
    assert module_bytes(out) < module_bytes(model)
    with pytest.raises(ValueError, match="nn.Linear"):
        bfloat16_linears(nn.Sequential(nn.ReLU()))


def _alone_as_in_a_batch_and_close(float_tower, tower) -> None:
    """A query alone and in a padded batch: the product's bfloat16 rounding can flip where
    float32's summation order differs (up to ~6e-4 measured), never a batch-wide scale."""
    batch = tower.encode_text(QUERIES)
    alone = np.stack([tower.encode_text([text])[0] for text in QUERIES])
    np.testing.assert_allclose(alone, batch, atol=2e-3)
    assert np.min(np.sum(alone * batch, axis=1)) > 0.99999
    full = float_tower.encode_text(QUERIES)
    assert not np.allclose(batch, full, atol=1e-6)  # bfloat16 really ran ...
    assert np.min(np.sum(batch * full, axis=1)) > 0.9999  # ... and stays close to float32


def test_bfloat16_minilm_is_a_copy_independent_of_its_batch(untrained_encoder):
    half = untrained_encoder.with_bfloat16_text()
    assert half.text_precision == "bfloat16" and untrained_encoder.text_precision == "float32"
    assert half.model.text is not untrained_encoder.model.text
    assert not any(isinstance(m, BFloat16Linear) for m in half.model.visual.modules())
    assert any(isinstance(m, BFloat16Linear) for m in half.model.text.modules())
    _alone_as_in_a_batch_and_close(untrained_encoder, half)


def test_bfloat16_student_is_smaller_and_independent_of_its_batch(untrained_encoder):
    bert = untrained_encoder.model.text.transformer
    student = QueryStudent(student_from_teacher(bert, [0, 5], 768), version="s")
    half = student.with_bfloat16_text()
    assert half.text_precision == "bfloat16" and half.version == student.version
    assert half.size_bytes < student.size_bytes and student.text_precision == "float32"
    _alone_as_in_a_batch_and_close(student, half)
