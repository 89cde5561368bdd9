"""Simulated restaurant devices (`python -m client_sim`) with a ground-truth log of what they did."""

from client_sim.config import SimConfig
from client_sim.credentials import RestaurantCredential, load_credentials
from client_sim.simulator import Simulator

__all__ = ["RestaurantCredential", "SimConfig", "Simulator", "load_credentials"]
