"""The Flower apps of a simulation, as ``flwr run`` loads them (``module:attribute``).

The ServerApp is the deployment's own; the ClientApp is the deployment's ClientApp with the
simulated population injected as the devices' data (``simulation.devices``).
"""

from __future__ import annotations

from client.app import build_client_app
from server.federation.app import app as server_app
from simulation.devices import simulated_device

client_app = build_client_app(source=simulated_device)

__all__ = ["client_app", "server_app"]
