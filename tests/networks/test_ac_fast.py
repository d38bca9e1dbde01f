"""The accelerated AC power flow (lightsim2grid's Newton-Raphson, recycled admittances)
gives plain ``pandapower.runpp``'s answers in every period, to 1e-8."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets.networks import feeder_profiles, net_injections
from gridmarkets.networks.ac_check import run_ac
from gridmarkets.networks.lindistflow import injections_pu

pytestmark = pytest.mark.unit


def scaled_own_injections(feeder, factors):
    """The net's own loads and generation, scaled per period (columns)."""
    p_kw, q_kvar = net_injections(feeder)
    return (pd.DataFrame({t: x * f for t, f in enumerate(factors)}) for x in (p_kw, q_kvar))


def simbench_day(feeder):
    """A June day of the feeder's SimBench profiles, hourly."""
    table = feeder_profiles(feeder, start=14400, periods=24, resolution_minutes=60)
    p = table.pivot(index="bus", columns="period", values="p_kw")
    q = table.pivot(index="bus", columns="period", values="q_kvar")
    return p, q


def assert_same_power_flow(feeder, p_kw, q_kvar):
    p, q, _ = injections_pu(feeder, p_kw, q_kvar)
    fast = run_ac(feeder, p, q)
    plain = run_ac(feeder, p, q, accelerated=False)
    assert fast.keys() == plain.keys()
    for name, values in plain.items():
        np.testing.assert_allclose(fast[name], values, rtol=0, atol=1e-8, err_msg=name)
    return plain


def test_fast_ac_equals_plain_runpp_on_simbench_profiles(simbench_lv):
    plain = assert_same_power_flow(simbench_lv, *simbench_day(simbench_lv))
    assert np.ptp(plain["vm_pu"][1:], axis=1).max() > 1e-3  # periods differ


def test_fast_ac_equals_plain_runpp_on_cigre_mv_with_trafos(cigre_mv):
    factors = [0.2, 0.6, 1.0, 1.4, -0.5, 0.9]
    plain = assert_same_power_flow(cigre_mv, *scaled_own_injections(cigre_mv, factors))
    trafos = (cigre_mv.branches["kind"] == "trafo").to_numpy()
    assert trafos.any() and np.abs(plain["p_pu"][trafos]).max() > 0.01
