import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from common.model.adapter import QueryAdapter
from common.model.adapter_numpy import NumpyAdapter


def test_the_numpy_adapter_adapts_as_the_torch_one(tmp_path):
    torch.manual_seed(0)
    adapter = QueryAdapter(32, rank=8)
    torch.nn.init.normal_(adapter.up.weight, std=0.3)  # not the identity
    adapter.save(tmp_path / "adapter.safetensors")
    queries = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    loaded = NumpyAdapter.load(tmp_path / "adapter.safetensors")
    assert (loaded.dim, loaded.rank) == (32, 8)
    expected = adapter.eval().apply_numpy(queries)
    assert not np.allclose(expected, queries / np.linalg.norm(queries, axis=1, keepdims=True))
    np.testing.assert_allclose(loaded.apply_numpy(queries), expected, atol=1e-6)
    np.testing.assert_allclose(loaded.apply_numpy(queries[0]), expected[0], atol=1e-6)


def test_adapter_files_without_metadata_or_with_wrong_shapes_are_refused(tmp_path):
    adapter = QueryAdapter(16, rank=4)
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="dim/rank metadata"):
        NumpyAdapter.load(tmp_path / "bare.safetensors")
    save_file(state, str(tmp_path / "lying.safetensors"), metadata={"dim": "16", "rank": "8"})
    with pytest.raises(ValueError, match="do not match"):
        NumpyAdapter.load(tmp_path / "lying.safetensors")
    arrays = {k: v.numpy() for k, v in state.items()}
    for key, wrong in (("up.weight", (4, 16)), ("down.bias", (1,)), ("up.bias", (4,))):
        with pytest.raises(ValueError, match=f"adapter {key} is"):
            NumpyAdapter({**arrays, key: np.zeros(wrong, dtype=np.float32)})
