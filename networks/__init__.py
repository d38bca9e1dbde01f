"""Distribution networks: pandapower to radial feeder, LinDistFlow, AC check, prices."""

from gridmarkets.networks.ac_check import ACCheck, ac_check, operating_point
from gridmarkets.networks.copperplate import CopperPlate
from gridmarkets.networks.coupling import NetworkFormulation, attach_grid
from gridmarkets.networks.feeder import (
    Feeder,
    available_networks,
    feeder_from_net,
    feeder_profiles,
    load,
    net_injections,
)
from gridmarkets.networks.handles import LinearInjections, NetworkHandles
from gridmarkets.networks.lindistflow import (
    LinDistFlow,
    OperatingPoint,
    linear_operating_point,
    linear_power_flow,
)
from gridmarkets.networks.losses import LossIteration, iterate_losses, linearise_at_lossless
from gridmarkets.networks.plot import plot_feeder
from gridmarkets.networks.prices import nodal_prices
from gridmarkets.networks.three_phase import (
    LinDist3Flow,
    ThreePhaseFeeder,
    ac_check_3ph,
    nodal_prices_3ph,
    three_phase_feeder,
)

__all__ = [
    "LinDist3Flow",
    "ThreePhaseFeeder",
    "ac_check_3ph",
    "nodal_prices_3ph",
    "three_phase_feeder",
    "ACCheck",
    "CopperPlate",
    "Feeder",
    "LinDistFlow",
    "LinearInjections",
    "LossIteration",
    "NetworkFormulation",
    "NetworkHandles",
    "OperatingPoint",
    "ac_check",
    "attach_grid",
    "available_networks",
    "feeder_from_net",
    "feeder_profiles",
    "iterate_losses",
    "linearise_at_lossless",
    "linear_operating_point",
    "linear_power_flow",
    "load",
    "net_injections",
    "nodal_prices",
    "operating_point",
    "plot_feeder",
]
