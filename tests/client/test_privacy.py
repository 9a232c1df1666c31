"""The device's own privacy: its policy refuses weak rounds; it adds its noise share."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from client.privacy import DevicePolicy, PolicyRefusal, noise_mod, privacy_mod, round_plan
from common.config import DeviceConfig, config_from_dict
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE, PrivacyPlan
from common.federation.run_spec import RunSpec
from common.privacy.keystream import KeystreamRandom


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """flwr 1.41 needs a task identity to build messages (the runtime sets one)."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _plan(tmp_path, **federation) -> PrivacyPlan:
    settings = {"clients_per_round": 20, "epsilon_user": 8.0, **federation}
    config = config_from_dict({"federation": settings})
    return PrivacyPlan.from_spec(RunSpec(config, "marketplace", 100, tmp_path))


POLICY = DevicePolicy.from_config(DeviceConfig())


@pytest.mark.parametrize(
    ("federation", "rule"),
    [
        ({"secagg": False, "noise": "server"}, "SecAgg\\+ is required"),
        ({"noise": "server"}, "noise added by the devices"),
        ({"dp": False}, "noise added by the devices"),
        ({"noise_multiplier": 0.3}, "below the device's minimum"),
        ({"clipping_norm": 50.0}, "above the device's maximum"),
        ({"epsilon_user": 40.0}, "epsilon_user 40"),
    ],
)
def test_the_policy_refuses_each_weak_plan(tmp_path, federation, rule):
    with pytest.raises(PolicyRefusal, match=rule):
        POLICY.check(_plan(tmp_path, **federation))


def test_the_default_plan_passes_the_default_policy(tmp_path):
    POLICY.check(_plan(tmp_path))


def test_a_lenient_device_accepts_what_its_own_settings_allow(tmp_path):
    lenient = DevicePolicy.from_config(
        DeviceConfig(require_secagg=False, require_noise=False, max_epsilon_user=50.0)
    )
    lenient.check(_plan(tmp_path, secagg=False, noise="server", epsilon_user=40.0))
    with pytest.raises(PolicyRefusal, match="unbounded"):
        lenient.check(_plan(tmp_path, dp=False))


def test_only_an_unbounded_epsilon_accepts_a_run_without_dp(tmp_path):
    unbounded = DevicePolicy.from_config(
        DeviceConfig(require_noise=False, max_epsilon_user=float("inf"))
    )
    unbounded.check(_plan(tmp_path, dp=False))
    with pytest.raises(PolicyRefusal, match="epsilon_user 40"):  # a DP plan still has a cap
        DevicePolicy.from_config(DeviceConfig(max_epsilon_user=30.0)).check(
            _plan(tmp_path, epsilon_user=40.0)
        )


def _message(stage: str, configs: dict) -> Message:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **configs})})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN, group_id="3")


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _setup(plan: PrivacyPlan, **changes) -> dict:
    configs = {
        Key.CLIPPING_RANGE: plan.clip_range,
        Key.TARGET_RANGE: QUANTIZATION_RANGE,
        Key.MOD_RANGE: MODULUS,
        Key.MAX_WEIGHT: 1.0,
    }
    return {**configs, **changes}


def _echo(msg: Message, ctxt: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def test_a_setup_with_other_quantization_is_refused(tmp_path):
    plan = _plan(tmp_path)
    mod = noise_mod(plan, lambda ctxt, r: KeystreamRandom.from_seed(r))
    mod(_message(Stage.SETUP, _setup(plan)), _context(), _echo)  # the plan's: accepted
    shrunk = _message(Stage.SETUP, _setup(plan, **{Key.CLIPPING_RANGE: plan.clip_range / 100}))
    with pytest.raises(PolicyRefusal, match="clipping_range"):
        mod(shrunk, _context(), _echo)


def test_the_masked_vector_leaves_with_the_planned_noise_share(tmp_path):
    plan = _plan(tmp_path)
    masked = [np.array([QUANTIZATION_RANGE]), np.full(20_000, MODULUS - 5, dtype=np.int64)]

    def reply(msg: Message, ctxt: Context) -> Message:
        record = ConfigRecord({Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in masked]})
        return Message(RecordDict({RECORD_KEY_CONFIGS: record}), reply_to=msg)

    mod = noise_mod(plan, lambda ctxt, r: KeystreamRandom.from_seed("device", r))
    out = mod(_message(Stage.COLLECT_MASKED_VECTORS, {}), _context(), reply)
    sent = [bytes_to_ndarray(b) for b in out.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    np.testing.assert_array_equal(sent[0], masked[0])  # SecAgg+'s weight factor untouched
    assert sent[1].min() >= 0 and sent[1].max() < MODULUS  # still modulo the modulus
    noise = (sent[1].astype(np.int64) - masked[1] + MODULUS // 2) % MODULUS - MODULUS // 2
    assert noise.std() == pytest.approx(plan.sigma_device(20_000), rel=0.03)


def test_privacy_mod_checks_the_policy_before_anything_runs(tmp_path):
    weak = _plan(tmp_path, noise_multiplier=0.1)
    ran = []

    def call_next(msg, ctxt):
        ran.append(msg)
        return _echo(msg, ctxt)

    mod = privacy_mod(lambda c: weak, lambda c: POLICY, lambda c, r: KeystreamRandom.from_os())
    with pytest.raises(PolicyRefusal):
        mod(_message(Stage.SETUP, _setup(weak)), _context(), call_next)
    assert not ran


def test_a_round_norm_outside_the_runs_bounds_is_refused_before_anything_runs(tmp_path):
    adaptive = _plan(tmp_path, adaptive_clipping=True, clipping_ceiling=4.0)
    ran = []

    def call_next(msg, ctxt):
        ran.append(msg)
        return _echo(msg, ctxt)

    mod = privacy_mod(lambda c: adaptive, lambda c: POLICY, lambda c, r: KeystreamRandom.from_os())
    message = _message(Stage.COLLECT_MASKED_VECTORS, {})
    message.content.config_records["fitins.config"] = ConfigRecord({"clipping_norm": 6.0})
    with pytest.raises(PolicyRefusal, match="clipping norm 6 is outside"):
        mod(message, _context(), call_next)
    assert not ran
    assert round_plan(adaptive, {"clipping_norm": 0.5}).sigma_device(100) == pytest.approx(
        adaptive.sigma_device(100) * 0.5, rel=0.01
    )  # the noise share follows the round's norm


def test_the_policy_caps_the_ceiling_of_an_adaptive_run(tmp_path):
    with pytest.raises(PolicyRefusal, match="clipping norm 50 is above"):
        POLICY.check(_plan(tmp_path, adaptive_clipping=True, clipping_ceiling=50.0))
