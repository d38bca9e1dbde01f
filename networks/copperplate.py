"""CopperPlate: the same market without the grid, one active balance per period."""

from __future__ import annotations

from collections.abc import Mapping

import pyomo.environ as pyo

from gridmarkets.networks.feeder import Feeder
from gridmarkets.networks.handles import NetworkHandles, kept
from gridmarkets.networks.rows import Rows, add_family, check_keys, market_terms


class CopperPlate:
    """No grid: every injection of a period meets in one balance (kW)."""

    name = "copperplate"

    def add(
        self,
        block: pyo.Block,
        feeder: Feeder | None,
        periods,
        p_kw: Mapping,
        q_kvar: Mapping,
        *,
        period_hours: float = 1.0,
    ) -> NetworkHandles:
        """Add ``sum over buses of p_kw[bus, t] == 0`` for every period.

        Parameters are those of :meth:`LinDistFlow.add`; ``feeder`` may be None and
        ``q_kvar`` is ignored (no reactive balance without a grid). The balance is in
        kW, so its dual is currency per kW and period.
        """
        periods = list(periods)
        check_keys(None if feeder is None else feeder.buses.index, periods, p_kw)
        position = {t: k for k, t in enumerate(periods)}.__getitem__
        terms, constants, extra = market_terms(p_kw, lambda key: position(key[1]), len(periods), 1)
        block.PERIODS = pyo.Set(initialize=periods, doc="market periods")
        add_family(
            block,
            "active_power_balance",
            (block.PERIODS,),
            Rows.of(len(periods), [terms], constants),
            0.0,
            0.0,
            "sum_j p[j,t] = 0  (kW): net injections balance in every period",
            extra,
        )
        return NetworkHandles(
            formulation=self.name,
            feeder=feeder,
            periods=periods,
            s_base_kva=1.0,
            period_hours=period_hours,
            block=block,
            active_power_balance=block.active_power_balance,
            p_kw=kept(p_kw),
            q_kvar=kept(q_kvar),
        )
