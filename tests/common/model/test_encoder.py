import io
import socket

import numpy as np
import pytest
from PIL import Image

from common.model.encoder import (
    EncoderError,
    builtin_models,
    create_encoder,
    load_image,
)

TITLES = ["Nike Men Black Running Shoes", "Titan Women Gold Watch", "Puma Men Blue Tshirt"]


def test_builtin_encoder_text_is_minilm_and_normalized(untrained_encoder):
    vecs = untrained_encoder.encode_text(TITLES)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    # pretrained MiniLM: related phrases are closer than unrelated ones
    shoe, watch = untrained_encoder.encode_text(["running shoes", "wrist watch"])
    assert vecs[0] @ shoe > vecs[0] @ watch
    assert vecs[1] @ watch > vecs[1] @ shoe


def test_encoding_is_deterministic_and_batch_independent(untrained_encoder, small_catalog):
    images = sorted((small_catalog / "images").glob("*.jpg"))[:5]
    a = untrained_encoder.encode_image(images)
    b = untrained_encoder.encode_image(images[::-1])[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    raw = images[0].read_bytes()
    np.testing.assert_allclose(untrained_encoder.encode_image([raw])[0], a[0], atol=1e-5)
    np.testing.assert_allclose(
        untrained_encoder.encode_text(TITLES[:1])[0],
        untrained_encoder.encode_text(TITLES)[0],
        atol=1e-5,
    )


def test_trimmed_padding_gives_the_full_width_vectors(untrained_encoder):
    import torch

    texts = ["watch", "black casual shoes for men", "a much longer query " * 3, "red", "x y"]
    with torch.no_grad():
        tokens = untrained_encoder.tokenizer(texts)  # padded to the full context length
        full = untrained_encoder.model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(untrained_encoder.encode_text(texts), full, atol=1e-5)


def test_fused_query_and_items(untrained_encoder, small_catalog):
    image = next((small_catalog / "images").glob("*.jpg"))
    t = untrained_encoder.encode_text(["black watch"])[0]
    i = untrained_encoder.encode_image([image])[0]
    q = untrained_encoder.encode_query("black watch", image, text_weight=0.5, image_weight=0.5)
    np.testing.assert_allclose(q, (t + i) / np.linalg.norm(t + i), atol=1e-5)
    np.testing.assert_allclose(untrained_encoder.encode_query("black watch"), t, atol=1e-6)
    items = untrained_encoder.encode_items(["black watch", "red shirt", None], [image, None, image])
    np.testing.assert_allclose(items[0], q, atol=1e-5)
    np.testing.assert_allclose(items[1], untrained_encoder.encode_text(["red shirt"])[0], atol=1e-5)
    np.testing.assert_allclose(items[2], i, atol=1e-5)
    with pytest.raises(ValueError, match="title, a photo"):
        untrained_encoder.encode_items([None], [None])
    with pytest.raises(ValueError, match="text, an image"):
        untrained_encoder.encode_query()


def test_load_image_rejects_non_images():
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(b"definitely not a jpeg")
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).mode == "RGB"


def test_checkpoint_loads_three_ways_with_identical_vectors(tiny_checkpoint, small_catalog):
    config, folder, _ = tiny_checkpoint
    images = sorted((small_catalog / "images").glob("*.jpg"))[:4]
    by_latest = create_encoder(config.encoder.model, "latest", encoder_dir=config.paths.encoders)
    by_dir = create_encoder(f"local-dir:{folder}")
    by_file = create_encoder(config.encoder.model, str(folder / "open_clip_model.safetensors"))
    reference = by_latest.encode_image(images)
    for other in (by_dir, by_file):
        np.testing.assert_allclose(other.encode_image(images), reference, atol=1e-5)
        np.testing.assert_allclose(
            other.encode_text(TITLES), by_latest.encode_text(TITLES), atol=1e-5
        )
    assert folder.name in by_latest.version and by_latest.version == by_dir.version
    # trained weights differ from a fresh vision tower
    fresh = create_encoder(config.encoder.model, "none")
    assert not np.allclose(fresh.encode_image(images), reference, atol=1e-3)


def test_factory_never_touches_the_network(monkeypatch, tiny_checkpoint):
    config, folder, _ = tiny_checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = create_encoder(f"local-dir:{folder}")
    assert encoder.encode_text(["offline"]).shape == (1, 384)


def test_factory_errors_are_clear(tmp_path):
    assert "fedsearch-minilm-rn64" in builtin_models()
    with pytest.raises(EncoderError, match="unknown model"):
        create_encoder("no-such-model")
    with pytest.raises(EncoderError, match="run `fedsearch pretrain` first"):
        create_encoder("fedsearch-minilm-rn64", "latest", encoder_dir=tmp_path)
    with pytest.raises(EncoderError, match="no open_clip_config.json"):
        create_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(EncoderError, match="could not build"):
        create_encoder("fedsearch-minilm-rn64", str(tmp_path / "missing.safetensors"))


def test_open_clip_names_resolve_through_the_same_factory():
    # a stock open_clip architecture, no pretrained tag: built locally, nothing downloaded
    encoder = create_encoder("RN50", "none")
    assert encoder.dim == 1024 and encoder.encode_text(["a shoe"]).shape == (1, 1024)
