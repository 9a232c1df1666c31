import numpy as np
import pytest

from common.model.precision import (
    PROBE_QUERIES,
    at_precision,
    choose_precision,
    resolve_precision,
)


def test_bfloat16_shares_the_model_and_stays_close_to_float32(untrained_encoder):
    queries = ["black casual shoes", "women watches", "blue jeans for men"]
    assert at_precision(untrained_encoder, "float32") is untrained_encoder
    with pytest.raises(ValueError, match="precision"):
        at_precision(untrained_encoder, "fp8")
    half = at_precision(untrained_encoder, "bfloat16")
    assert half.model is untrained_encoder.model and half.text_precision == "bfloat16"
    assert untrained_encoder.text_precision == "float32"
    full, low = untrained_encoder.encode_text(queries), half.encode_text(queries)
    assert not np.array_equal(low, full)  # it really ran in bfloat16 ...
    assert np.min(np.sum(low * full, axis=1)) > 0.999  # ... and stays close to float32
    np.testing.assert_allclose(half.encode_text(queries[:1])[0], low[0], atol=1e-6)


class Clock:
    """A stubbed timer: time moves only when a fake tower encodes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTower:
    """Encodes instantly in real time, advancing ``clock`` by the cost of its precision."""

    def __init__(self, clock: Clock, cost: dict, drift: float = 0.0) -> None:
        self.version, self.text_autocast = "fake:v1", None
        self.clock, self.cost, self.drift = clock, cost, drift

    @property
    def text_precision(self) -> str:
        return "bfloat16" if self.text_autocast is not None else "float32"

    def encode_text(self, texts):
        self.clock.now += self.cost[self.text_precision] * len(texts)
        rows = np.ones((len(texts), 4), dtype=np.float32)
        if self.text_precision == "bfloat16":
            rows[:, 0] += self.drift
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("float32_ms", "bfloat16_ms", "drift", "expected"),
    [
        (7.7, 13.6, 0.0, "float32"),  # the machine: bfloat16 slower
        (5.0, 3.0, 0.0, "bfloat16"),  # faster and agreeing
        (5.0, 3.0, 1.0, "float32"),  # faster but its vectors disagree
        (4.0, 4.0, 0.0, "float32"),  # a tie keeps float32
    ],
)
def test_auto_keeps_the_fastest_agreeing_precision(float32_ms, bfloat16_ms, drift, expected):
    clock = Clock()
    tower = FakeTower(clock, {"float32": float32_ms / 1e3, "bfloat16": bfloat16_ms / 1e3}, drift)
    choice = choose_precision(tower, timer=clock)
    assert choice.precision == expected
    assert choice.ms_per_query == pytest.approx({"float32": float32_ms, "bfloat16": bfloat16_ms})
    assert "float32" in choice.reason and "bfloat16" in choice.reason
    if drift:
        assert "refused" in choice.reason


def test_auto_is_never_slower_than_float32_on_what_it_measured():
    rng = np.random.default_rng(0)
    for _ in range(50):
        clock = Clock()
        cost = {"float32": rng.uniform(1, 10) / 1e3, "bfloat16": rng.uniform(1, 10) / 1e3}
        choice = choose_precision(FakeTower(clock, cost), probes=PROBE_QUERIES[:4], timer=clock)
        assert cost[choice.precision] <= cost["float32"]


def test_resolve_measures_auto_once_per_model_version(monkeypatch):
    calls = []

    def fake_choose(tower, **kw):
        calls.append(tower.version)
        return choose_precision(tower, timer=clock)

    clock = Clock()
    monkeypatch.setattr("common.model.precision.choose_precision", fake_choose)
    monkeypatch.setattr("common.model.precision._CHOICES", {})
    tower = FakeTower(clock, {"float32": 0.002, "bfloat16": 0.001})
    served, choice = resolve_precision(tower, "auto")
    assert choice.precision == "bfloat16" and served.text_precision == "bfloat16"
    assert resolve_precision(tower, "auto")[1] is choice and calls == ["fake:v1"]
    fixed, why = resolve_precision(tower, "float32")
    assert fixed is tower and why.reason == "set by configuration"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(tower, "int4")
