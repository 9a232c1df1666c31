"""The device's Flower client: trains the global query adapter on one device's search log
and replies with its payload (see ``client.app``). Imported by the ClientApp on the first
training message only: it needs torch and Opacus, which the SecAgg+ stages do not."""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient

from client.local_device import LocalDevice
from client.local_training import train_local
from client.privacy import SERVER_VIEW_KEY, ServerView, round_plan
from client.store import PersonalState
from common.evaluation.metrics import MODES
from common.evaluation.protocol import (
    device_bonus,
    gate_for_queries,
    metrics_from_sums,
    rank_sums,
    ranks_by_mode,
    stack_searches,
)
from common.federation.candidate import decode_candidate
from common.federation.payload import UNCLIPPED, PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from common.model.personalization import user_vector


class AdapterClient(NumPyClient):
    """Trains the global query adapter on one device and reports through its payload."""

    def __init__(self, device: LocalDevice, spec: RunSpec) -> None:
        self.device = device
        self.spec = spec
        self.config = spec.config

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list, int, dict]:
        round_number = int(config.get("round", 0))
        plan = round_plan(PrivacyPlan.from_spec(self.spec), config)
        codec = PayloadCodec.for_plan(parameters, plan)
        view_rdp = ServerView.round_rdp(plan, codec.size)
        state = self._state()
        if view_rdp is not None and self._past_server_cap(state, view_rdp, plan.delta):
            # nothing of this device's data goes into the sum: a declined, empty payload
            empty = [np.zeros_like(p) for p in parameters]
            return [codec.encode(empty, {"trained": 0.0, "declined": 1.0})], 1, {}
        adapter = QueryAdapter.from_weights(parameters)
        result = train_local(
            adapter,
            self.device.data.train,
            self.device.item_vectors,
            self.device.config,
            self.config.adapter,
            state.accountant,
            seed=self.device.seed("train", round_number),
            public_items=self.device.public_items,
        )

        def record(state: PersonalState) -> PersonalState:
            # under the store lock: an SDK update of the user vector meanwhile is kept
            state.accountant = result.accountant
            trained = int(state.info.get("rounds_trained", 0))
            state.info["rounds_trained"] = trained + (0 if result.declined else 1)
            if view_rdp is not None:  # its evaluation, at least, is in the sum
                view = ServerView.from_info(state.info).after(view_rdp, plan.delta)
                state.info[SERVER_VIEW_KEY] = view.to_info()
            return state

        self.device.store.update_state(record)
        update = (
            [np.zeros_like(p) for p in parameters]
            if result.weights is None
            else [new - old for new, old in zip(result.weights, parameters, strict=True)]
        )
        stats = {"trained": float(not result.declined), "declined": float(result.declined)}
        if plan.adaptive:
            stats[UNCLIPPED] = float(not result.declined and codec.unclipped(update))
        if codec.stats_size:
            stats |= self._evaluation(decode_candidate(config))
        # weight 1: under user-level DP every device counts once
        return [codec.encode(update, stats)], 1, {}

    def _past_server_cap(self, state: PersonalState, round_rdp: np.ndarray, delta: float) -> bool:
        """Whether one more round would take the server's view of this device past its
        ``max_epsilon_server``."""
        view = ServerView.from_info(state.info).after(round_rdp, delta)
        return view.epsilon() > self.device.config.max_epsilon_server

    def _evaluation(self, candidate: list[np.ndarray] | None) -> dict[str, float]:
        """Per-device means of HR, nDCG and reciprocal rank on the held-out searches, for the
        base encoder, the ``candidate`` adapter sent for evaluation (None: the base encoder
        again), and its personal rerank. Bounded figures inside the noised sum, whatever
        the weights: evaluating unsigned weights reveals no more than the round's DP
        allows, and a candidate never serves searches."""
        test, vectors = self.device.data.test, self.device.item_vectors
        if not test:
            return {"evaluated": 0.0}
        settings = self.config.evaluation
        adapter = None if candidate is None else QueryAdapter.from_weights(candidate)
        queries, relevant = stack_searches(test)
        ranks = ranks_by_mode(
            queries,
            adapter.apply_numpy(queries) if adapter is not None else None,
            relevant,
            vectors,
            users=self._state().user_vector,
            beta=settings.beta,
            candidates=settings.candidates,
            bonus=device_bonus(self.device.data, self.device.attributes, settings.attribute_beta),
            gate=gate_for_queries(self.device.facets if settings.facet_gate else None, test),
        )
        out = {"evaluated": 1.0}
        for mode in MODES:
            means = metrics_from_sums(rank_sums(ranks[mode], settings.k), settings.k)
            out[f"{mode}.hr"] = means[f"HR@{settings.k}"]
            out[f"{mode}.ndcg"] = means[f"nDCG@{settings.k}"]
            out[f"{mode}.rr"] = means["MRR"]
        return out

    def _state(self) -> PersonalState:
        """The private state; the user vector (mean of clicked items) is built on first use."""
        state = self.device.store.load_state()
        if state.user_vector is not None:
            return state

        def build(state: PersonalState) -> PersonalState:
            if state.user_vector is None:
                clicked = [s.clicked for s in self.device.data.train]
                state.user_vector = user_vector(self.device.item_vectors[clicked])
            return state

        return self.device.store.update_state(build)
