"""CopperPlate: the same market without the grid, one active balance per period."""

from __future__ import annotations

import pyomo.environ as pyo

from gridmarkets.networks.feeder import Feeder
from gridmarkets.networks.handles import NetworkHandles, kept


class CopperPlate:
    """No grid: every injection of a period meets in one balance (kW)."""

    name = "copperplate"

    def add(
        self,
        block: pyo.Block,
        feeder: Feeder | None,
        periods,
        p_kw: dict,
        q_kvar: dict,
        *,
        period_hours: float = 1.0,
    ) -> NetworkHandles:
        """Add ``sum over buses of p_kw[bus, t] == 0`` for every period.

        Parameters are those of :meth:`LinDistFlow.add`; ``feeder`` may be None and
        ``q_kvar`` is ignored (no reactive balance without a grid). The balance is in
        kW, so its dual is currency per kW and period.
        """
        periods = list(periods)
        by_period: dict = {t: [] for t in periods}
        for (_, t), expr in p_kw.items():
            by_period[t].append(expr)
        block.PERIODS = pyo.Set(initialize=periods, doc="market periods")
        block.active_power_balance = pyo.Constraint(
            block.PERIODS,
            rule=lambda b, t: sum(by_period[t]) == 0,
            doc="sum_j p[j,t] = 0  (kW): net injections balance in every period",
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
