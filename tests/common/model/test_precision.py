from __future__ import annotations

import numpy as np
import pytest

from common.model.precision import (
    PROBE_QUERIES,
    at_precision,
    choose_precision,
    resolve_precision,
)


def test_bfloat16_is_a_converted_copy_close_to_float32(untrained_encoder):
    queries = ["black casual shoes", "women watches", "blue jeans for men"]
    assert at_precision(untrained_encoder, "float32") is untrained_encoder
    with pytest.raises(ValueError, match="precision"):
        at_precision(untrained_encoder, "fp8")
    half = at_precision(untrained_encoder, "bfloat16")
    assert half.model is not untrained_encoder.model and half.text_precision == "bfloat16"
    assert untrained_encoder.text_precision == "float32"
    assert at_precision(half, "bfloat16") is half
    with pytest.raises(ValueError, match="bfloat16 tower cannot be converted"):
        at_precision(half, "int8")
    full, low = untrained_encoder.encode_text(queries), half.encode_text(queries)
    assert not np.array_equal(low, full)  # it really ran in bfloat16 ...
    assert np.min(np.sum(low * full, axis=1)) > 0.9999  # ... and stays close to float32


class Clock:
    """A stubbed timer: time moves only when a fake tower encodes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTower:
    """Encodes instantly in real time, advancing ``clock`` by the cost of its precision;
    ``drift[precision]`` moves that precision's vectors away from float32's."""

    def __init__(self, clock: Clock, cost: dict, drift: dict | None = None) -> None:
        self.version, self.text_precision = "fake:v1", "float32"
        self.precisions = ("float32", "bfloat16", "int8")
        self.clock, self.cost, self.drift = clock, {"int8": 1.0, **cost}, drift or {}

    def _at(self, precision: str) -> FakeTower:
        out = FakeTower(self.clock, self.cost, self.drift)
        out.text_precision = precision
        return out

    def with_int8_text(self, calibration) -> FakeTower:
        assert calibration and not set(calibration) & set(PROBE_QUERIES)
        return self._at("int8")

    def with_bfloat16_text(self) -> FakeTower:
        return self._at("bfloat16")

    def encode_text(self, texts):
        cost = self.cost[self.text_precision]  # seconds per text, or (alone, each in a batch)
        if isinstance(cost, tuple):
            cost = cost[0] if len(texts) == 1 else cost[1]
        self.clock.now += cost * len(texts)
        rows = np.ones((len(texts), 4), dtype=np.float32)
        rows[:, 0] += self.drift.get(self.text_precision, 0.0)
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
    cost = {"float32": float32_ms / 1e3, "bfloat16": bfloat16_ms / 1e3}
    tower = FakeTower(clock, cost, {"bfloat16": drift})
    choice = choose_precision(tower, candidates=("float32", "bfloat16"), timer=clock)
    assert choice.precision == expected
    assert choice.ms_per_query == pytest.approx({"float32": float32_ms, "bfloat16": bfloat16_ms})
    assert "float32" in choice.reason and "bfloat16" in choice.reason
    if drift:
        assert "refused" in choice.reason


def test_auto_is_never_slower_than_float32_on_what_it_measured():
    rng = np.random.default_rng(0)
    for _ in range(50):
        clock = Clock()
        cost = {p: rng.uniform(1, 10) / 1e3 for p in ("float32", "bfloat16", "int8")}
        choice = choose_precision(FakeTower(clock, cost), probes=PROBE_QUERIES[:4], timer=clock)
        assert cost[choice.precision] <= cost["float32"]


def test_auto_weighs_queries_alone_and_in_batches_alike():
    clock = Clock()
    # int8 is the slowest alone but the fastest in batches: mean 3.0 ms against 3.25 and 4.5
    cost = {"float32": (0.006, 0.003), "bfloat16": (0.004, 0.0025), "int8": (0.005, 0.001)}
    choice = choose_precision(FakeTower(clock, cost), timer=clock)
    assert choice.precision == "int8"
    assert choice.ms_per_query == pytest.approx({"float32": 4.5, "bfloat16": 3.25, "int8": 3.0})
    assert "alone and in batches of 8" in choice.reason
    one = choose_precision(FakeTower(clock, cost), probes=PROBE_QUERIES[:1], timer=clock)
    assert one.ms_per_query == pytest.approx({"float32": 6.0, "bfloat16": 4.0, "int8": 5.0})


def test_resolve_measures_auto_once_per_model_version(monkeypatch):
    calls = []

    def fake_choose(tower, **kw):
        calls.append(tower.version)
        return choose_precision(tower, timer=clock)

    clock = Clock()
    monkeypatch.setattr("common.model.precision.choose_precision", fake_choose)
    monkeypatch.setattr("common.model.precision._CHOICES", {})
    tower = FakeTower(clock, {"float32": 0.002, "bfloat16": 0.001, "int8": 0.003})
    served, choice = resolve_precision(tower, "auto")
    assert choice.precision == "bfloat16" and served.text_precision == "bfloat16"
    assert resolve_precision(tower, "auto")[1] is choice and calls == ["fake:v1"]
    fixed, why = resolve_precision(tower, "float32")
    assert fixed is tower and why.reason == "set by configuration"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(tower, "int4")


@pytest.mark.parametrize(
    ("int8_drift", "expected"),
    [(0.0, "int8"), (0.2, "float32")],  # agreeing int8 is kept; disagreeing int8 is refused
)
def test_auto_keeps_int8_only_when_it_agrees_and_is_faster(int8_drift, expected):
    clock = Clock()
    cost = {"float32": 0.005, "bfloat16": 0.009, "int8": 0.002}
    choice = choose_precision(FakeTower(clock, cost, {"int8": int8_drift}), timer=clock)
    assert choice.precision == expected
    assert choice.ms_per_query == pytest.approx({"float32": 5.0, "bfloat16": 9.0, "int8": 2.0})
    assert ("int8 refused" in choice.reason) == bool(int8_drift)
    slower = FakeTower(clock, {**cost, "int8": 0.006})
    assert choose_precision(slower, timer=clock).precision == "float32"


def test_an_int8_tower_is_a_copy_that_cannot_go_back(untrained_encoder):
    int8 = at_precision(untrained_encoder, "int8")
    assert int8.text_precision == "int8" and int8.model is not untrained_encoder.model
    assert untrained_encoder.text_precision == "float32"
    assert at_precision(int8, "int8") is int8
    for other in ("float32", "bfloat16"):
        with pytest.raises(ValueError, match="int8 tower cannot be converted"):
            at_precision(int8, other)
