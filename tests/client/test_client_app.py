"""The ClientApp's clipping mod and the run spec it reads (no simulation)."""

from __future__ import annotations

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as to_arrays
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity

from client.app import clipping_mod
from common.config import Config, ConfigError
from common.federation.run_spec import RunSpec

CLIP = 0.1


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """flwr 1.41 needs a task identity to build messages (the runtime sets one)."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _train_message(weights):
    fit_ins = FitIns(ndarrays_to_parameters(weights), {KEY_CLIPPING_NORM: CLIP, "round": 1})
    content = compat.fitins_to_recorddict(fit_ins, keep_input=True)
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _reply_with(weights):
    def call_next(msg: Message, ctxt: Context) -> Message:
        fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 1, {"loss": 1.0})
        return Message(compat.fitres_to_recorddict(fit_res, keep_input=True), reply_to=msg)

    return call_next


def _context():
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _sent(reply):
    return to_arrays(compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)


def test_clipping_mod_clips_the_update_to_c():
    start = [np.zeros((3, 4), np.float32), np.ones(4, np.float32)]
    trained = [w + 1.0 for w in start]
    sent = _sent(clipping_mod(_train_message(start), _context(), _reply_with(trained)))
    update = np.concatenate([(s - w).ravel() for s, w in zip(sent, start, strict=True)])
    assert np.linalg.norm(update) == pytest.approx(CLIP, rel=1e-5)


def test_clipping_mod_lets_a_declining_devices_zero_update_through():
    start = [np.full((3, 4), 0.5, np.float32), np.ones(4, np.float32)]
    sent = _sent(clipping_mod(_train_message(start), _context(), _reply_with(start)))
    for got, want in zip(sent, start, strict=True):
        np.testing.assert_array_equal(got, want)


def test_run_spec_from_a_flower_run_config(tmp_path):
    spec = RunSpec.from_run_config(
        {
            "population": "retail",
            "num-devices": 12,
            "run-dir": str(tmp_path / "run"),
            "federation.rounds": 4,
            "federation.clients_per_round": 3,
            "device.local-epochs": 2,
            "federation.noise_multiplier": "",
        },
        run_id=7,
    )
    assert spec.population == "retail" and spec.num_devices == 12
    assert spec.config.federation.rounds == 4 and spec.config.device.local_epochs == 2
    assert spec.config.federation.noise_multiplier == Config().federation.noise_multiplier
    assert spec.sample_rate == pytest.approx(3 / 12) and spec.delta_user == pytest.approx(1 / 12)
    assert spec.run_dir == tmp_path / "run"
    default = RunSpec.from_run_config({"num-devices": 3}, run_id=7)
    assert default.run_dir.name == "run-7" and default.population == "marketplace"


@pytest.mark.parametrize(
    ("run_config", "key"),
    [
        ({"num-devices": 3, "rounds": 2}, "rounds"),
        ({"num-devices": 3, "federation.nope": 1}, "federation.nope"),
        ({"num-devices": 1}, "num-devices"),
        ({"num-devices": 3, "population": "mall"}, "population"),
    ],
)
def test_run_spec_names_the_bad_key(run_config, key):
    with pytest.raises(ConfigError, match=key):
        RunSpec.from_run_config(run_config, run_id=1)
