"""The Flower apps of a simulation, as ``flwr run`` loads them (``module:attribute``).

The ServerApp is the deployment's own, drawing its randomness from ``federation.seed`` so
runs repeat; the ClientApp is the deployment's ClientApp with the simulated population
injected as the devices' data (``simulation.devices``) and the wiretaps
(``simulation.wiretap``), faults (``simulation.faults``), privacy-audit canaries
(``simulation.canaries``), poisoning devices (``simulation.poisoning``) and deliberately
broken noise (``simulation.broken_noise``),
which act only when a run switches them on, and SecAgg+'s rounding seeded from the run's
seed (``simulation.seeded_rounding``). Importing it also indexes the simulation runtime's
message delivery (``simulation.message_index``), which changes its cost, not its messages.
"""

from __future__ import annotations

import warnings

from client.app import build_client_app
from server.federation.app import build_server_app
from simulation.broken_noise import silent_noise_mod
from simulation.canaries import canary_mod
from simulation.devices import simulated_device
from simulation.faults import fault_cohort, fault_mod
from simulation.message_index import install_message_index
from simulation.poisoning import attack_mod
from simulation.seeded_rounding import seeded_rounding_mod
from simulation.wiretap import run_tap, server_tap

# Simulated devices draw DP noise from a seeded generator on purpose (reproducible runs);
# Opacus' reminder that its secure RNG is off belongs on real devices only.
warnings.filterwarnings("ignore", message="Secure RNG turned off", module="opacus")

install_message_index()  # Flower's runtime polls every node for its messages
server_app = build_server_app(seeded=True, on_sum=server_tap, on_cohort=fault_cohort)
client_app = build_client_app(
    source=simulated_device,
    outer_mods=[seeded_rounding_mod, fault_mod, run_tap("wire"), silent_noise_mod],
    inner_mods=[run_tap("plain"), canary_mod, attack_mod],
    run_paths=True,  # the simulated devices live in the run folder (one user's experiment)
)

__all__ = ["client_app", "server_app"]
