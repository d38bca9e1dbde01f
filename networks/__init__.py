"""Distribution networks: pandapower to radial feeder, LinDistFlow, AC check, prices."""

from gridmarkets.networks.feeder import (
    Feeder,
    available_networks,
    feeder_from_net,
    feeder_profiles,
    load,
    net_injections,
)

__all__ = [
    "Feeder",
    "available_networks",
    "feeder_from_net",
    "feeder_profiles",
    "load",
    "net_injections",
]
