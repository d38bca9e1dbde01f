"""Local electricity market: pool-based social-welfare clearing.

The market operator accepts block bids (buy) and offers (sell) per period to maximise
social welfare, trading the rest with the upstream grid when there is one, subject to
the network formulation it is given (one balance per period without a network,
LinDistFlow with nodal balances on a feeder).

Units: quantities in kW (energy = kW x period hours), prices in currency per MWh,
welfare and payments in currency. Settlement sign: a positive ``payment`` is paid by
the participant to the market; sellers receive (negative payments).

Prices. The uniform price of a period is the dual of its balance: what one more kW of
demand would cost. Where supply and demand meet on a vertical step the dual is not
unique; the set of prices that support the cleared quantities is reported as
[``price_low``, ``price_high``] (derived from which blocks are accepted, partly
accepted or rejected) and ``price`` is its midpoint when both ends are finite, its
finite end when only one is (else the LP dual, which lies inside it). With a network,
nodal prices (DLMPs) come from the nodal balances and are reported per bus with their
decomposition; their interval is not analysed (``price_low = price_high = price``).
Pay-as-bid settles each accepted block at its own price.

Indivisible blocks (all-or-nothing) and minimum acceptance ratios make the clearing a
MILP. Its prices are convex-hull prices: the duals of the LP relaxation, which for
block bids (``r q u <= x <= q u``, each the convex hull of its block's choices) are
the prices that minimise the total lost opportunity of the participants (Gribik, Hogan
and Pope 2007), never a default of 0. Each participant's ``uplift`` -- the loss it
would make at those prices, paid back to it so nobody trades at a loss -- and its
``lost_opportunity`` -- what its own best response to the prices would earn beyond its
cleared surplus -- are reported.

Reactive power. A block's kvar follow its kW: ``q_kvar`` at full acceptance or a
``power_factor`` (lagging: loads draw, generators inject); neither is unity power
factor (:func:`reactive_ratio`). On a feeder the market's injections reach the network
formulation through :func:`~gridmarkets.networks.attach_grid` with their P and Q.

Scale. No tolerance is absolute: a block counts as accepted, or as having room, to a
millionth of its own quantity (capped at the solver's resolution). Blocks no larger
than the solver resolves (HiGHS's primal feasibility tolerance, 1e-7 kW; their welfare
is below its optimality tolerance, so the LP cannot tell accepting them from not) are
decided by their own merit order against the resolved market, which buys at its
supporting interval's low end and sells at its high end (the nodal price on a
feeder). So a market mixing 1e-9 and 1e9 kW blocks clears as its merit order does.
A QP clearing (curves or inter-temporal participants) is solved with its welfare per
MWh (times 1000 / dt), and more so that its smallest curvature 2 a is at least 1
(:func:`~gridmarkets.solvers.scale_objective_by`): in currency its Hessian entries,
2 a dt / 1000, sit near HiGHS's tolerances, and HiGHS 1.16's QP solver cycled without
end on small markets of identical curves (tests/models/test_lem_curves.py). The objective
and the prices are reported unscaled.

Quadratic curves. A participant may instead give a curve per period: output (sell) or
consumption (buy) p in [``p_min_kw``, ``p_max_kw``] kW, continuous, with a cost (sell)
``C(p) = a p^2 + b p`` or a utility (buy) ``U(p) = b p - a p^2`` in currency/MWh x kW,
i.e. ``a`` in currency/MWh per kW and ``b`` in currency/MWh, so over a period of dt
hours the cost or utility is ``C(p) dt / 1000`` currency; ``a >= 0`` (convex cost,
concave utility). Marginal cost ``2 a p + b``, marginal utility ``b - 2 a p``
(currency/MWh). ``p_min_kw > 0`` is a must-run minimum, always produced or consumed
(no on/off choice, so the market stays a convex QP). The welfare adds the utilities
and subtracts the costs; prices stay the balances' duals, and without a network a curve
above its minimum bounds the price interval as an accepted block at its marginal value
does, one below its maximum as a block with room (an interior curve with ``a > 0`` pins
it). At the market price a curve's best response is
``clip((price - b) / (2 a), p_min, p_max)`` (sell) or ``clip((b - price) / (2 a), ...)``
(buy), the bound its margin points to when ``a = 0``. Its gain is measured against its
alternative at the same price: producing or consuming only ``p_min_kw`` (not trading
when that is 0); a must-run participant that loses money at its minimum is not owed
uplift for it. Curves are settled at the uniform or nodal price only (pay-as-bid is
refused), cannot be combined with indivisible blocks or minimum acceptances (a
mixed-integer QP), and a market with curves is built again rather than updated.

Participants. Curves, storage, flexible loads and device bids may also come as
participants with their own model (:mod:`~gridmarkets.models.participants`): each on its
own block ``m.participant[n]``, its net injection ``participant_kw[n, t]`` in the
balances (unity power factor) and its welfare in the objective. Their schedules are in
the ``schedules`` table. Without a network their prices are the balances' duals (the
interval of supporting prices is not analysed: ``price_low = price_high = price``). Each
participant is re-solved alone as a price-taker at the cleared prices
(``best_responses``: cleared profit, best profit, lost opportunity, and ``no_trade``,
its welfare without trading, NaN when it cannot do without the market); its gain is
against not trading where it can, else against that best response (its only
alternative). ``participants_best_response`` is 1 when every lost opportunity is within
a millionth of the participant's best profit (at least 1e-6 currency).

Periods apart. When nothing links the periods -- no storage, flexible load or device
bid with a battery, EV, appliance, heat pump or demand charge, and no integer block
(:func:`period_coupling`) -- the clearing is one LP (or QP) per period side by side,
and by default (``decompose="auto"``) :func:`~gridmarkets.solvers.solve` solves each
period's LP on its own, in parallel (:func:`~gridmarkets.solvers.highs.solve_apart`;
the parts are the connected components of the compiled LP, so a user's ``extra``
constraint that links periods keeps them together). The period LPs' points and duals
together are an optimal point and dual of the whole LP, loaded into the same model, so
the tables, prices and certificates are made as for the whole LP: the same optimum,
and where it is unique the same quantities and prices. Where the dual is not unique
the reported prices follow the same rules on both paths: a period's uniform price is
its supporting interval's midpoint (or finite end), read from the cleared quantities,
so it is the same whichever solve found them; on a feeder the nodal prices are the LP
duals (an optimal dual of either solve; tests/models/test_lem_periods.py bounds them by
finite differences). ``decompose="periods"`` demands it (an InputError names what links
the periods), ``"none"`` solves the whole LP. ``solution.parts`` is the number of LPs
solved.

Certificates (KPIs): ``min_gain``, the smallest participant gain against not trading
(surplus plus uplift), and ``individually_rational`` when it is at least minus
``gain_tolerance`` (a millionth of the market's stake, sum |price| q dt);
``max_lost_opportunity``; ``reconciliation_error``, the sum of the ``parties`` table
(participants, the upstream grid at its tariffs, the operator's rents from the
network's own bus injections at the nodal prices, the pay-as-bid margin and the uplift
it funds), zero when every payment is accounted for.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression

from gridmarkets.errors import InputError
from gridmarkets.inputs import plain
from gridmarkets.models.participants import (
    DeviceBid,
    FlexibleLoad,
    Participant,
    StorageBid,
    add_participants,
    best_response,
    curvatures,
    curve_welfare,
    objective_scale,
    prepare_participants,
    profit,
    schedule_table,
    value_without_trading,
)
from gridmarkets.networks.coupling import NetworkFormulation, attach_grid, placed
from gridmarkets.networks.feeder import Feeder
from gridmarkets.results import Result
from gridmarkets.solvers import (
    Solution,
    price_milp_by,
    record_build_time,
    scale_objective_by,
    solve,
)
from gridmarkets.solvers.highs import gc_paused, solve_apart

BID_COLUMNS = ["participant", "side", "quantity_kw", "price", "period", "block", "bus"]
OPTIONAL_COLUMNS = ["indivisible", "min_acceptance", "q_kvar", "power_factor", "phase"]
MIN_MUST_RUN_KW = 1e-3  # least nonzero p_min_kw of a curve (see prepare_curves)
CURVE_COLUMNS = ["participant", "side", "period", "bus", "a", "b", "p_min_kw", "p_max_kw"]
UPSTREAM = "upstream"
_NO_CURVES = pd.DataFrame(columns=CURVE_COLUMNS)
_REL_TOL = 1e-6  # a block is at a bound within a millionth of its quantity ...
_NOISE_KW = 1e-9  # ... and, when the solver resolves it, within its values' noise
_RESOLUTION_KW = 1e-7  # HiGHS's primal feasibility tolerance: smaller blocks are unresolved
_ROUNDING = 1e-14  # a few units of double rounding, relative
DECOMPOSE = ("auto", "periods", "none")


@dataclass(frozen=True)
class Upstream:
    """The upstream grid at the feeder's root: tariffs per period and a capacity.

    Prices in currency per MWh, one value or one per period; ``capacity_kw`` bounds
    import and export each (None: unlimited).
    """

    import_price: float | Sequence[float]
    export_price: float | Sequence[float]
    capacity_kw: float | None = None

    def per_period(self, periods: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return _per_period(self.import_price, periods, "import_price"), _per_period(
            self.export_price, periods, "export_price"
        )


def _per_period(value, periods: Sequence[int], name: str) -> np.ndarray:
    values = (
        np.broadcast_to(np.asarray(value, dtype=float), (len(periods),))
        if np.ndim(value) == 0
        else np.asarray(value, dtype=float)
    )
    if values.shape != (len(periods),):
        raise InputError(f"upstream.{name}: {len(values)} values for {len(periods)} periods")
    return values


def prepare_bids(bids: pd.DataFrame) -> pd.DataFrame:
    """Check a bids table and fill its optional columns (period 0, block 0.., bus None)."""
    missing = {"participant", "side", "quantity_kw", "price"} - set(bids.columns)
    if missing:
        raise InputError(f"bids: missing column(s) {sorted(missing)}")
    unknown = set(bids.columns) - set(BID_COLUMNS) - set(OPTIONAL_COLUMNS)
    if unknown:
        raise InputError(f"bids: unknown column(s) {sorted(unknown)}")
    table = bids.reset_index(drop=True).copy()
    period = pd.to_numeric(table.get("period", 0), errors="coerce")
    table["period"] = pd.Series(period, index=table.index).fillna(0)
    _reject(table, table["period"] % 1 != 0, "period", "must be a whole number")
    table["period"] = table["period"].astype(int)
    if "block" not in table:
        table["block"] = table.groupby(["participant", "side", "period"]).cumcount()
    if "bus" not in table:
        table["bus"] = None
    _check_bid_values(table)
    if "phase" in table:
        table["phase"] = _connections(table)
    return table


def _connections(table: pd.DataFrame, what: str = "bids") -> pd.Series:
    """The ``phase`` column as connections ("a", "bc", "abc", ...; missing: "abc",
    balanced three-phase), letters sorted; anything else is an error naming the row."""
    from gridmarkets.networks.three_phase import connection

    phase = table["phase"].map(connection)
    _reject(table, phase.isna(), "phase", "is not a, b, c or a combination of them", what)
    return phase


def _check_bid_values(table: pd.DataFrame) -> None:
    bad_side = ~table["side"].isin(["buy", "sell"])
    _reject(table, bad_side, "side", "must be 'buy' or 'sell'")
    for column in ("quantity_kw", "price"):
        as_number = pd.to_numeric(table[column], errors="coerce")
        _reject(table, as_number.isna() | ~np.isfinite(as_number), column, "must be a number")
        table[column] = as_number.astype(float)
    _reject(table, table["quantity_kw"] < 0, "quantity_kw", "must not be negative")
    _reject(table, table["period"] < 0, "period", "must not be negative")
    duplicate = table.duplicated(["participant", "side", "period", "block"], keep=False)
    _reject(table, duplicate, "block", "repeats (participant, side, period, block)")
    check_reactive(table)


def check_reactive(table: pd.DataFrame, reject: Callable | None = None) -> None:
    """``q_kvar`` a number, ``power_factor`` in (0, 1], never both on one block.

    ``reject(table, mask, column, reason)`` raises the error naming the first bad row
    (default: this module's, naming the bids row and participant); other tables (the
    flexibility market's offers) pass their own.
    """
    reject = _reject if reject is None else reject
    q = pd.to_numeric(table.get("q_kvar", pd.Series(np.nan, index=table.index)), errors="coerce")
    given = table.get("q_kvar", pd.Series(None, index=table.index, dtype=object)).notna()
    reject(table, given & (q.isna() | ~np.isfinite(q)), "q_kvar", "must be a number")
    pf = table.get("power_factor", pd.Series(np.nan, index=table.index))
    as_pf = pd.to_numeric(pf, errors="coerce")
    reject(table, pf.notna() & ~((as_pf > 0) & (as_pf <= 1)), "power_factor", "must be in (0, 1]")
    reject(table, given & pf.notna(), "power_factor", "and q_kvar are both given; give one")


def prepare_curves(curves: pd.DataFrame | None) -> pd.DataFrame:
    """Check a curves table (:func:`build`) and fill its optional columns (period 0,
    bus None, p_min_kw 0); errors name the row and the column."""
    if curves is None:
        curves = pd.DataFrame(columns=["participant", "side", "a", "b", "p_max_kw"])
    missing = {"participant", "side", "a", "b", "p_max_kw"} - set(curves.columns)
    if missing:
        raise InputError(f"curves: missing column(s) {sorted(missing)}")
    unknown = set(curves.columns) - set(CURVE_COLUMNS) - {"q_kvar", "power_factor", "phase"}
    if unknown:
        raise InputError(f"curves: unknown column(s) {sorted(unknown)}")
    table = curves.reset_index(drop=True).copy()
    for column, default in (("period", 0), ("p_min_kw", 0.0)):
        value = pd.to_numeric(table.get(column, default), errors="coerce")
        table[column] = pd.Series(value, index=table.index).fillna(default)
    if "bus" not in table:
        table["bus"] = None
    _reject(
        table, ~table["side"].isin(["buy", "sell"]), "side", "must be 'buy' or 'sell'", "curves"
    )
    for column in ("a", "b", "p_min_kw", "p_max_kw", "period"):
        as_number = pd.to_numeric(table[column], errors="coerce")
        bad = as_number.isna() | ~np.isfinite(as_number)
        _reject(table, bad, column, "must be a number", "curves")
        table[column] = as_number.astype(float)
    _reject(table, table["period"] % 1 != 0, "period", "must be a whole number", "curves")
    _reject(table, table["period"] < 0, "period", "must not be negative", "curves")
    table["period"] = table["period"].astype(int)
    _reject(
        table,
        table["a"] < 0,
        "a",
        "must not be negative (a convex cost, a concave utility)",
        "curves",
    )
    _reject(table, table["p_min_kw"] < 0, "p_min_kw", "must not be negative", "curves")
    # HiGHS 1.16's QP solver ends in "Solve error" on a must-run minimum of 1e-6 kW beside
    # block bids (tests/models/test_lem_curves.py), where the column shift of
    # gridmarkets.solvers.highs does not help; such minimums are refused, not solved wrong.
    tiny = (table["p_min_kw"] > 0) & (table["p_min_kw"] < MIN_MUST_RUN_KW)
    _reject(table, tiny, "p_min_kw", f"is above 0 but below {MIN_MUST_RUN_KW} kW", "curves")
    below = table["p_max_kw"] < table["p_min_kw"]
    _reject(table, below, "p_max_kw", "is below p_min_kw", "curves")
    duplicate = table.duplicated(["participant", "side", "period"], keep=False)
    _reject(table, duplicate, "period", "repeats (participant, side, period)", "curves")
    check_reactive(table, lambda *args: _reject(*args, "curves"))
    if "phase" in table:
        table["phase"] = _connections(table, "curves")
    return table


def curve_reactive_ratio(curves: pd.DataFrame) -> np.ndarray:
    """kvar per kW of each curve: ``q_kvar`` is given at ``p_max_kw`` (as a block's at
    its quantity), ``power_factor`` as for blocks (:func:`reactive_ratio`)."""
    return reactive_ratio(curves.assign(quantity_kw=curves["p_max_kw"]))


def reactive_ratio(table: pd.DataFrame) -> np.ndarray:
    """Reactive power per kW of each block (kvar/kW), in the block's own direction.

    A block's reactive power follows its active power: a buy block of ``quantity_kw``
    with ``q_kvar`` draws ``q_kvar`` at full acceptance (a sell block injects it), in
    proportion when partly accepted; ``power_factor`` pf gives ``tan(acos(pf))`` kvar per
    kW (lagging: a load draws, a generator injects). Neither given: unity power factor
    (0), the default for hand-written bids. Profile bids carry the pandapower element's
    own ratio as ``q_kvar``.
    """
    n = len(table)
    ratio = np.zeros(n)
    if "power_factor" in table:
        pf = pd.to_numeric(table["power_factor"], errors="coerce").to_numpy(float)
        has = ~np.isnan(pf)
        ratio[has] = np.tan(np.arccos(pf[has]))
    if "q_kvar" in table:
        q = pd.to_numeric(table["q_kvar"], errors="coerce").to_numpy(float)
        quantity = table["quantity_kw"].to_numpy(float)
        has = ~np.isnan(q)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[has] = np.where(quantity[has] > 0, q[has] / quantity[has], 0.0)
    return ratio


def _reject(
    table: pd.DataFrame, mask: pd.Series, column: str, reason: str, what: str = "bids"
) -> None:
    if mask.any():
        row = table[mask].iloc[0]
        raise InputError(
            f"{what} row {row.name} (participant {row['participant']!r}): {column} "
            f"{plain(row[column])} {reason} ({int(mask.sum())} such row(s))"
        )


def build(
    bids: pd.DataFrame | None,
    *,
    curves: pd.DataFrame | None = None,
    upstream: Upstream | None = None,
    network: Feeder | None = None,
    formulation: NetworkFormulation | None = None,
    period_hours: float = 1.0,
    indivisible: bool = False,
    min_acceptance: float | None = None,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
    participants: Sequence[Participant | dict] | None = None,
    periods: Sequence[int] | None = None,
    decompose: Literal["auto", "periods", "none"] = "auto",
) -> pyo.ConcreteModel:
    """Build the social-welfare clearing as a Pyomo model.

    Parameters
    ----------
    bids : table with columns participant, side, quantity_kw, price (currency/MWh) and
        optional period, block, bus, indivisible (bool per block), min_acceptance,
        q_kvar or power_factor (reactive power, :func:`reactive_ratio`); None: no blocks.
    curves : quadratic participants (module docstring, Quadratic curves), one row per
        participant, side and period: participant, side, a (currency/MWh per kW), b
        (currency/MWh), p_max_kw and optional period, bus, p_min_kw (default 0; above 0
        a must-run minimum), q_kvar (at p_max_kw) or power_factor, phase. None: none.
        With curves the market is a QP: uniform pricing, no integer blocks.
    upstream : the upstream grid; None for an islanded market.
    network : a :class:`~gridmarkets.networks.Feeder` (LinDistFlow, nodal prices) or
        None (one balance per period).
    formulation : the network formulation (default LinDistFlow on a feeder, CopperPlate
        without one), e.g. ``LinDistFlow(losses="linear")``.
    indivisible : every block all-or-nothing (else per-block column ``indivisible``).
    min_acceptance : a ratio in (0, 1]: an accepted block is accepted at least this much.
    extra : a function called with the model before the objective is final, to add
        user constraints.
    participants : participants with their own model (module docstring, Participants;
        :mod:`~gridmarkets.models.participants`): curves, storage, flexible loads,
        device bids, as specs or dicts with a ``kind``. None: none.
    periods : the market's periods (default: those of the bids and curves); needed
        when only participants define the horizon.
    decompose : how :func:`~gridmarkets.solvers.solve` solves the market (module
        docstring, Periods apart): "periods", each period as an LP of its own, in
        parallel (an InputError names the participant and field that link periods, or
        the integer blocks); "none", one LP; "auto" (default), "periods" when nothing
        links the periods and the market is continuous, else "none".
    """
    started = time.perf_counter()
    table = prepare_bids(pd.DataFrame(columns=BID_COLUMNS[:4]) if bids is None else bids)
    # without curves: no checks or placement, the block market builds as before
    curve_table = prepare_curves(curves) if curves is not None else _NO_CURVES
    specs = prepare_participants(participants)
    periods = _market_periods(periods, table, curve_table, specs)
    table = _place_bids(table, network, periods)
    if len(curve_table):
        curve_table = _place_bids(curve_table, network, periods)
    m = pyo.ConcreteModel(name="lem")
    m.bids = table
    m.curves = curve_table
    m.participant_specs = specs
    m.upstream = upstream
    m.feeder = network
    m.period_hours = period_hours
    m.BIDS = pyo.Set(initialize=table.index.tolist(), doc="bid and offer blocks")
    m.PERIODS = pyo.Set(initialize=periods, doc="market periods")
    _add_acceptance(m, table, indivisible, min_acceptance)
    _refuse_integer_curves(m)
    _add_curves(m, curve_table)
    _add_market_participants(m, specs, network)
    _add_upstream(m, upstream)
    attach_grid(
        m,
        network,
        periods,
        _injections(m, table, network),
        formulation=formulation,
        period_hours=period_hours,
    )
    _add_welfare(m, table)
    price_milp_by(m, "convex_hull")
    _choose_decomposition(m, decompose)
    if len(curve_table) or specs:
        a = np.concatenate([curve_table["a"].to_numpy(float), curvatures(specs)])
        scale_objective_by(m, objective_scale(a, period_hours))
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def period_coupling(m) -> str | None:
    """What makes the market more than its periods side by side, read from its inputs:
    the first participant whose own model links periods, named with the field that
    does (storage's state of charge, a flexible load's energy budget, a device bid's
    battery, EV, appliances, heat pump or demand charge), or the integer blocks (a
    MILP, solved whole); None when its periods are independent LPs (or QPs)."""
    for spec in m.participant_specs:
        if isinstance(spec, StorageBid):
            return f"participant {spec.participant!r} (storage: its state of charge soc_kwh)"
        if isinstance(spec, FlexibleLoad):
            return f"participant {spec.participant!r} (flexible_load: its budget energy_kwh)"
        if isinstance(spec, DeviceBid):
            home = spec.home
            linking = [f for f in ("battery", "ev", "heat_pump") if getattr(home, f) is not None]
            linking += ["appliances"] * bool(home.appliances)
            linking += ["demand_charge_per_kw"] * bool(home.demand_charge_per_kw)
            if linking:
                return f"participant {spec.participant!r} (device: home.{linking[0]})"
    if hasattr(m, "INTEGER_BIDS"):
        first = m.bids.loc[list(m.INTEGER_BIDS)[0]]
        return (
            f"bids row {first.name} (participant {first['participant']!r}: indivisible or "
            f"min_acceptance, {len(m.INTEGER_BIDS)} integer block(s): a MILP, solved whole)"
        )
    return None


def _choose_decomposition(m, decompose: str) -> None:
    """Mark the market to be solved period by period (:func:`~gridmarkets.solvers.
    highs.solve_apart`) as ``decompose`` says (:func:`build`)."""
    if decompose not in DECOMPOSE:
        raise InputError(f"decompose: {decompose!r} is not one of {', '.join(DECOMPOSE)}")
    coupling = period_coupling(m) if decompose != "none" else None
    if decompose == "periods" and coupling is not None:
        raise InputError(f"decompose: 'periods' refused, {coupling} links the periods")
    if decompose != "none" and coupling is None and len(m.PERIODS) > 1:
        solve_apart(m)


def _market_periods(periods, table, curves, specs) -> list[int]:
    """The given periods, else those of the bids and curves (0 alone when none)."""
    found = sorted(set(table["period"]) | set(curves["period"]))
    if periods is None:
        if specs and not found:
            raise InputError("periods: give the market's periods (only participants are in it)")
        return found or [0]
    periods = sorted(int(t) for t in periods)
    outside = sorted(set(found) - set(periods))
    if outside:
        raise InputError(f"periods: bids or curves in period {outside[0]}, not a market period")
    return periods


def _add_market_participants(m, specs: list, feeder: Feeder | None) -> None:
    """Participants on their own blocks (:func:`~gridmarkets.models.participants.
    add_participants`), their buses checked as the bids' are."""
    if not specs:
        return
    owners = pd.DataFrame(
        {
            "owner": [s.participant for s in specs],
            "bus": [s.bus for s in specs],
            "period": m.PERIODS.first(),
        }
    )
    m.participant_buses = placed(owners, feeder, list(m.PERIODS))["bus"].tolist()
    overlap = set(m.bids["participant"]) | set(m.curves["participant"])
    clash = [s.participant for s in specs if s.participant in overlap]
    if clash:
        raise InputError(
            f"participants: {clash[0]!r} also has bids or curves; give it one name per model"
        )
    m.participants_welfare = pyo.Expression(
        expr=add_participants(m, specs, list(m.PERIODS), m.period_hours),
        doc="sum_n welfare[n]: utilities less costs of the participants' own models  (currency)",
    )


def _place_bids(table: pd.DataFrame, feeder: Feeder | None, periods: Sequence) -> pd.DataFrame:
    """The bids at the feeder's own bus labels (None without a feeder), checked as every
    model's injections are (:func:`~gridmarkets.networks.placed`)."""
    owners = table[["participant", "bus", "period"]].rename(columns={"participant": "owner"})
    return table.assign(bus=placed(owners, feeder, periods)["bus"].to_numpy())


@gc_paused()
def _add_acceptance(m, table: pd.DataFrame, indivisible: bool, min_acceptance) -> None:
    quantity = table["quantity_kw"].to_dict()
    m.accepted_kw = pyo.Var(
        m.BIDS,
        domain=pyo.NonNegativeReals,
        doc="accepted quantity of block b: 0 <= q[b] <= quantity_kw[b]  (kW)",
    )
    for block, kw in zip(m.accepted_kw.values(), quantity.values(), strict=True):
        block.setub(kw)  # faster than a bounds rule called per block
    whole = table.get("indivisible", pd.Series(False, index=table.index))
    whole = whole.astype("boolean").fillna(False).astype(bool)
    ratio = table.get("min_acceptance", pd.Series(np.nan, index=table.index))
    ratio = ratio.fillna(min_acceptance if min_acceptance is not None else 0.0)
    ratio = ratio.where(~(whole.astype(bool) | indivisible), 1.0)
    if ((ratio < 0) | (ratio > 1)).any():
        raise InputError("min_acceptance: ratios must lie in [0, 1]")
    integer_blocks = ratio[ratio > 0].index.tolist()
    if not integer_blocks:
        return
    m.INTEGER_BIDS = pyo.Set(initialize=integer_blocks, doc="blocks with a minimum acceptance")
    m.is_accepted = pyo.Var(m.INTEGER_BIDS, domain=pyo.Binary, doc="block b accepted (1) or not")
    m.acceptance_upper = pyo.Constraint(
        m.INTEGER_BIDS,
        rule=lambda m, b: m.accepted_kw[b] <= quantity[b] * m.is_accepted[b],
        doc="q[b] <= quantity_kw[b] u[b]  (kW)",
    )
    m.acceptance_lower = pyo.Constraint(
        m.INTEGER_BIDS,
        rule=lambda m, b: m.accepted_kw[b] >= ratio[b] * quantity[b] * m.is_accepted[b],
        doc="q[b] >= min_acceptance[b] quantity_kw[b] u[b]  (kW)",
    )


def _add_upstream(m, upstream: Upstream | None) -> None:
    if upstream is None:
        return
    cap = upstream.capacity_kw
    m.import_kw = pyo.Var(m.PERIODS, bounds=(0, cap), doc="import from the upstream grid (kW)")
    m.export_kw = pyo.Var(m.PERIODS, bounds=(0, cap), doc="export to the upstream grid (kW)")


def _refuse_integer_curves(m) -> None:
    """Curves make the welfare quadratic; with integer blocks that is a mixed-integer QP,
    which HiGHS does not solve: refused here, in the market's terms."""
    if len(m.curves) and hasattr(m, "INTEGER_BIDS"):
        first = m.bids.loc[list(m.INTEGER_BIDS)[0]]
        raise InputError(
            f"curves: a market with quadratic curves cannot have indivisible blocks or "
            f"minimum acceptances (bids row {first.name}, participant "
            f"{first['participant']!r}, and {len(m.INTEGER_BIDS)} such block(s) in all): "
            "the clearing would be a mixed-integer QP, which HiGHS does not solve"
        )


def _add_curves(m, curves: pd.DataFrame) -> None:
    """One continuous output or consumption per curve, between its bounds."""
    if not len(curves):
        return
    m.CURVES = pyo.Set(initialize=curves.index.tolist(), doc="quadratic participants' curves")
    limits = zip(curves["p_min_kw"], curves["p_max_kw"], strict=True)
    bounds = dict(zip(curves.index, limits, strict=True))
    m.curve_kw = pyo.Var(
        m.CURVES,
        bounds=lambda m, c: bounds[c],
        doc="output (sell) or consumption (buy) of curve c: p_min_kw[c] <= p[c] <= "
        "p_max_kw[c]  (kW); p_min_kw > 0 is a must-run minimum, not an on/off choice",
    )


def _curve_injections(m) -> pd.DataFrame:
    """Curves' injection terms: a sell curve injects p, a buy curve withdraws it, each
    with its kvar per kW (:func:`curve_reactive_ratio`)."""
    curves = m.curves
    sign = np.where(curves["side"] == "sell", 1.0, -1.0)
    terms = pd.DataFrame(
        {
            "owner": curves["participant"].to_numpy(),
            "bus": curves["bus"].to_numpy(),
            "period": curves["period"].to_numpy(),
            "variable": list(m.curve_kw.values()),
            "p_coef": sign,
            "q_coef": sign * curve_reactive_ratio(curves),
        }
    )
    if "phase" in curves:
        terms["phase"] = curves["phase"].to_numpy()
    return terms


def _curve_welfare(m):
    """The curves' part of the welfare (currency, :func:`~gridmarkets.models.participants.
    curve_welfare`): concave, so the clearing is a convex QP."""
    c = m.curves
    return curve_welfare(c["side"], c["a"], c["b"], list(m.curve_kw.values()), m.period_hours)


@gc_paused()
def _injections(m, table: pd.DataFrame, feeder: Feeder | None) -> pd.DataFrame:
    """The market's injections as terms (one row per block, a hundred thousand on the
    largest benchmark): offers inject, bids withdraw, each with its kvar per kW; the
    upstream grid imports and exports at the root."""
    sign = np.where(table["side"] == "sell", 1.0, -1.0)
    terms = pd.DataFrame(
        {
            "owner": table["participant"].to_numpy(),
            "bus": table["bus"].to_numpy(),
            "period": table["period"].to_numpy(),
            "variable": list(m.accepted_kw.values()),
            "p_coef": sign,
            "q_coef": sign * reactive_ratio(table),
        }
    )
    if "phase" in table:
        terms["phase"] = table["phase"].to_numpy()  # the upstream grid's rows: "abc"
    if len(m.curves):
        terms = pd.concat([terms, _curve_injections(m)], ignore_index=True)
    if m.participant_specs:
        terms = pd.concat([terms, _participant_injections(m)], ignore_index=True)
    if m.upstream is None:
        return terms
    periods = list(m.PERIODS)
    root = None if feeder is None else feeder.root
    grid = pd.DataFrame(
        {
            "owner": UPSTREAM,
            "bus": root,
            "period": periods * 2,
            "variable": [*m.import_kw.values(), *m.export_kw.values()],
            "p_coef": [1.0] * len(periods) + [-1.0] * len(periods),
            "q_coef": 0.0,
        }
    )
    return pd.concat([terms, grid], ignore_index=True)


def _participant_injections(m) -> pd.DataFrame:
    """Participants' injection terms: ``participant_kw[n, t]`` at unity power factor."""
    keys = list(m.participant_kw)
    bus = dict(zip(m.PARTICIPANTS, m.participant_buses, strict=True))
    return pd.DataFrame(
        {
            "owner": [n for n, _ in keys],
            "bus": [bus[n] for n, _ in keys],
            "period": [t for _, t in keys],
            "variable": list(m.participant_kw.values()),
            "p_coef": 1.0,
            "q_coef": 0.0,
        }
    )


def _add_welfare(m, table: pd.DataFrame) -> None:
    welfare = _welfare(m, table)
    if len(m.curves):  # only then: the block market's objective stays a LinearExpression
        welfare = welfare + _curve_welfare(m)
    if m.participant_specs:
        welfare = welfare + m.participants_welfare
    m.social_welfare = pyo.Objective(
        expr=welfare,
        sense=pyo.maximize,
        doc="sum_buy price q dt - sum_sell price q dt - import cost + export revenue"
        " + sum_buy-curves (b p - a p^2) dt/1000 - sum_sell-curves (a p^2 + b p) dt/1000"
        " + sum_participants welfare[n]  (currency)",
    )


@gc_paused()
def _welfare(m, table: pd.DataFrame) -> LinearExpression:
    per_kw = m.period_hours / 1000.0  # currency per MWh -> currency per kW and period
    value = np.where(table["side"] == "buy", 1.0, -1.0) * table["price"].to_numpy() * per_kw
    pairs = zip(value.tolist(), m.accepted_kw.values(), strict=True)
    if m.upstream is not None:
        imp, exp = m.upstream.per_period(list(m.PERIODS))
        export = zip((per_kw * exp).tolist(), m.export_kw.values(), strict=True)
        cost = zip((-per_kw * imp).tolist(), m.import_kw.values(), strict=True)
        pairs = itertools.chain(pairs, export, cost)
    return LinearExpression(list(map(MonomialTermExpression, pairs)))


def update(m: pyo.ConcreteModel, bids: pd.DataFrame, *, upstream: Upstream | None = None) -> None:
    """Give a market built by :func:`build` new block quantities and prices and new
    upstream tariffs, in place: only the acceptance bounds and the objective change.

    Parameters
    ----------
    m : the model :func:`build` returned (constraints added by its ``extra`` stay).
    bids : the same blocks as the model's (participant, side, period, block, bus and
        every other column but quantity_kw, price and q_kvar, in the same order, with
        the same kvar per kW).
    upstream : as the model's: present or absent alike, with the same capacity.

    Raises
    ------
    InputError : anything else differs (build the model again), a block with a
        minimum acceptance changes its quantity (a coefficient of its constraints), or
        the market has quadratic curves (build it again).
    The model is left unchanged when the update is refused.
    """
    started = time.perf_counter()
    if len(m.curves) or m.participant_specs:
        raise InputError(
            f"curves, participants: the market has {len(m.curves)} quadratic curve(s) and "
            f"{len(m.participant_specs)} participant(s); update() changes blocks only: "
            "build the market again"
        )
    table = _place_bids(prepare_bids(bids), m.feeder, list(m.PERIODS))
    data = [c for c in ("quantity_kw", "price", "q_kvar") if c in table]
    if not table.drop(columns=data).equals(m.bids.drop(columns=data, errors="ignore")):
        raise InputError("bids: not the blocks the market was built with; build it again")
    if not np.allclose(reactive_ratio(table), reactive_ratio(m.bids), rtol=1e-12, atol=0):
        raise InputError("bids: a block's kvar per kW changes (a model coefficient); build again")
    _check_same_upstream(m, upstream)
    if hasattr(m, "INTEGER_BIDS"):
        moved = table["quantity_kw"].ne(m.bids["quantity_kw"])[list(m.INTEGER_BIDS)]
        if moved.any():
            raise InputError("bids: a block with a minimum acceptance changes its quantity")
    for var, quantity in zip(m.accepted_kw.values(), table["quantity_kw"].tolist(), strict=True):
        var.setub(quantity)
    m.bids, m.upstream = table, upstream
    m.social_welfare.set_value(_welfare(m, table))
    record_build_time(m, time.perf_counter() - started)


def _check_same_upstream(m, upstream: Upstream | None) -> None:
    if (upstream is None) != (m.upstream is None):
        raise InputError("upstream: present in one market and not the other; build it again")
    if upstream is not None:
        if upstream.capacity_kw != m.upstream.capacity_kw:
            raise InputError("upstream.capacity_kw: changed; build the market again")
        upstream.per_period(list(m.PERIODS))  # one tariff per period, or an InputError


def results(
    m: pyo.ConcreteModel,
    solution: Solution,
    pricing: Literal["uniform", "pay_as_bid"] = "uniform",
) -> Result:
    """Tidy tables (accepted, prices, settlement, parties, upstream), KPIs and the
    certificates (module docstring) of a cleared market."""
    _check_pricing(pricing, m.curves, m.participant_specs)
    from gridmarkets.networks import nodal_prices

    nodal = nodal_prices(m.handles, solution)
    upstream = _upstream_table(m)
    unresolved = _unresolved_blocks(m)
    curves = _curves_table(m)
    accepted = _accepted_table(m)
    resolved = accepted[~unresolved]
    if len(curves):
        resolved = pd.concat([resolved, _curve_steps(curves)], ignore_index=True)
    prices = _prices_table(m, nodal, resolved, upstream)
    block_prices = _block_prices(m, prices)
    if unresolved.any():
        _accept_at_prices(m, unresolved, block_prices)
        accepted = _accepted_table(m)
    settled = _settle(accepted, block_prices, m, pricing)
    if len(curves):
        curves = _with_prices(m, curves, block_prices)
        settled = pd.concat([settled, _settle_curves(curves, m)], ignore_index=True)
    schedules, responses = _participants_at_prices(m, block_prices)
    if responses is not None:
        settled = pd.concat([settled, _settle_participants(m, schedules, responses)])
    settlement = _settlement_table(settled.reset_index(drop=True))
    parties = _parties_table(m, settlement, settled, prices, upstream)
    kpis = _kpis(m, solution, settled, upstream) | _certificates(m, settlement, parties, responses)
    tables = {"accepted": accepted, "prices": prices, "settlement": settlement}
    if len(curves):
        tables["accepted_curves"] = curves
    if responses is not None:
        tables["schedules"] = schedules
        tables["best_responses"] = responses
        kpis |= _best_response_certificate(responses)
    tables["parties"] = parties
    if upstream is not None:
        tables["upstream"] = upstream
    return Result("lem", tables, kpis, solution)


def _check_pricing(pricing: str, curves: pd.DataFrame | None, participants=None) -> None:
    if pricing not in ("uniform", "pay_as_bid"):
        raise InputError(f"pricing: {pricing!r} is not 'uniform' or 'pay_as_bid'")
    if pricing == "pay_as_bid" and ((curves is not None and len(curves)) or participants):
        raise InputError(
            "pricing: 'pay_as_bid' is not defined for quadratic curves or participants "
            "(they have no single bid price); use 'uniform'"
        )


def _participants_at_prices(m, prices: pd.DataFrame) -> tuple:
    """(schedules with their prices, best responses) of the participants with their own
    model; (None, None) without any."""
    if not m.participant_specs:
        return None, None
    schedules = _with_prices(m, _schedules(m), prices)
    return schedules, _best_responses(m, schedules)


def _best_responses(m, schedules: pd.DataFrame) -> pd.DataFrame:
    """The competitive-equilibrium certificate of each participant: its profit on the
    cleared schedule at the market's prices (welfare plus revenue, currency) against
    its best response, re-solved alone as a price-taker
    (:func:`~gridmarkets.models.participants.best_response`); and its alternative, the
    welfare of not trading when it can do without the market (NaN otherwise)."""
    periods, hours = list(m.PERIODS), m.period_hours
    rows = []
    for spec in m.participant_specs:
        own = schedules[schedules["participant"] == spec.participant]
        price, p_net = own["price"].to_numpy(float), own["p_net_kw"].to_numpy(float)
        cleared = profit(pyo.value(m.participant[spec.participant].welfare), p_net, price, hours)
        best, _ = best_response(spec, price, periods, hours)
        alone = value_without_trading(spec, periods, hours)
        rows.append((spec.participant, spec.kind, cleared, best, best - cleared, alone))
    columns = ["participant", "kind", "profit", "best_profit", "lost_opportunity", "no_trade"]
    return pd.DataFrame(rows, columns=columns).astype({"no_trade": float})


def _settle_participants(m, schedules: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Participants' rows for the settlement: one per period with its energy (bought
    positive) and payment at the market price; the participant's surplus (its cleared
    profit), best surplus and alternative on its first period's row. The alternative
    is not trading where the participant can do without the market, else its best
    response (it has no other), so its gain is then minus its lost opportunity."""
    hours = m.period_hours
    settled = schedules.assign(
        side=np.where(schedules["p_net_kw"] > 0, "sell", "buy"),
        accepted_kw=schedules["p_net_kw"].abs(),
        offered_kw=schedules["p_net_kw"].abs(),
        market_price=schedules["price"],
        energy_kwh=-schedules["p_net_kw"] * hours,
        curve=True,
    )
    settled["payment"] = settled["energy_kwh"] * settled["price"] / 1000.0
    first = ~settled.duplicated("participant")
    by_name = responses.set_index("participant")
    reference = by_name["no_trade"].fillna(by_name["best_profit"])
    for column, values in (
        ("surplus", by_name["profit"]),
        ("best_surplus", by_name["best_profit"]),
        ("reference", reference),
    ):
        settled[column] = np.where(first, settled["participant"].map(values), 0.0)
    return settled.drop(columns=["kind", "p_net_kw", "soc_kwh"])


def _best_response_certificate(responses: pd.DataFrame) -> dict[str, float]:
    """``participants_max_lost_opportunity`` (currency) and ``participants_best_response``
    (1 when every participant's cleared profit is its best response's to 1e-6 of it)."""
    lost = responses["lost_opportunity"].to_numpy(float)
    tolerance = _REL_TOL * np.maximum(1.0, responses["best_profit"].abs().to_numpy(float))
    return {
        "participants_max_lost_opportunity": float(lost.max(initial=0.0)),
        "participants_best_response": float((np.abs(lost) <= tolerance).all()),
    }


def _curves_table(m) -> pd.DataFrame:
    """Each curve with its cleared quantity (kW), kvar and marginal value at it
    (currency/MWh): a sell curve's marginal cost ``2 a p + b``, a buy curve's marginal
    utility ``b - 2 a p``."""
    curves = m.curves
    if not len(curves):
        return pd.DataFrame()
    p = np.array([pyo.value(v) for v in m.curve_kw.values()], dtype=float)
    p = np.clip(p, curves["p_min_kw"].to_numpy(), curves["p_max_kw"].to_numpy())
    sign = np.where(curves["side"] == "sell", 1.0, -1.0)
    a, b = curves["a"].to_numpy(), curves["b"].to_numpy()
    phase = {"phase": _curve_phases(m)} if "phase" in curves or _three_phase(m) else {}
    return pd.DataFrame(
        {
            "participant": curves["participant"],
            "side": curves["side"],
            "period": curves["period"],
            "bus": curves["bus"],
            **phase,
            "a": a,
            "b": b,
            "p_min_kw": curves["p_min_kw"],
            "p_max_kw": curves["p_max_kw"],
            "accepted_kw": p,
            "q_kvar": curve_reactive_ratio(curves) * p,
            "marginal_value": b + sign * 2.0 * a * p,
        }
    )


def _curve_steps(curves: pd.DataFrame) -> pd.DataFrame:
    """Curves as the blocks :func:`price_interval` reads: a curve whose output is above
    its minimum bounds the price as an accepted block at its marginal value does, one
    below its maximum as a block with room; a fixed curve (p_min = p_max, or narrower
    than the solver resolves) bounds nothing."""
    if not len(curves):
        return pd.DataFrame()
    width = (curves["p_max_kw"] - curves["p_min_kw"]).to_numpy()
    steps = pd.DataFrame(
        {
            "period": curves["period"],
            "side": curves["side"],
            "offered_kw": width,
            "bid_price": curves["marginal_value"],
            "accepted_kw": np.clip(curves["accepted_kw"] - curves["p_min_kw"], 0.0, width),
        }
    )
    return steps[width >= _RESOLUTION_KW]


def _curve_phases(m) -> pd.Series:
    curves = m.curves
    return curves["phase"] if "phase" in curves else pd.Series("abc", index=curves.index)


def _with_prices(m, table: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Curves or participants' schedules with the market price at their bus, period
    (and connection, "abc" when none is given)."""
    keyed = table.assign(phase=table.get("phase", "abc")) if _three_phase(m) else table
    price = keyed.merge(prices[[*_keys(m), "price"]], on=_keys(m), how="left")["price"]
    return table.assign(price=price.to_numpy())


def _schedules(m) -> pd.DataFrame:
    """The participants' schedules (:func:`~gridmarkets.models.participants.
    schedule_table`) at their buses as placed on the feeder."""
    table = schedule_table(m, m.participant_specs)
    buses = dict(zip(m.PARTICIPANTS, m.participant_buses, strict=True))
    return table.assign(bus=table["participant"].map(buses))


def _settle_curves(curves: pd.DataFrame, m) -> pd.DataFrame:
    """Curves settled at the market price (uniform pricing), as :func:`_settle` settles
    blocks. At price lambda a curve's surplus is ``f(p) dt/1000`` with
    ``f(p) = s (b - lambda) p - a p^2`` (s = +1 buy, -1 sell: utility less payment,
    payment less cost). Its best response maximises f over [p_min, p_max]:
    ``clip(s (b - lambda) / (2 a), p_min, p_max)``, or for a = 0 the bound the sign of
    ``s (b - lambda)`` points to. ``reference`` is f at p_min, what the participant would
    make producing or consuming only its must-run minimum (0 when p_min = 0): its gain
    is measured against that (module docstring)."""
    per_kw = m.period_hours / 1000.0
    s = np.where(curves["side"] == "buy", 1.0, -1.0)
    a, b, lam = curves["a"].to_numpy(), curves["b"].to_numpy(), curves["price"].to_numpy()
    low, high = curves["p_min_kw"].to_numpy(), curves["p_max_kw"].to_numpy()
    slope = s * (b - lam)  # currency/MWh per kW of output or consumption
    with np.errstate(divide="ignore", invalid="ignore"):
        interior = np.where(a > 0, slope / (2.0 * a), np.where(slope > 0, high, low))
    best = np.clip(interior, low, high)

    def value(p):
        return (slope * p - a * p**2) * per_kw

    p = curves["accepted_kw"].to_numpy()
    energy = s * p * m.period_hours  # as blocks: bought energy positive
    return pd.DataFrame(
        {
            "participant": curves["participant"],
            "side": curves["side"],
            "period": curves["period"],
            "bus": curves["bus"],
            "offered_kw": high,
            "accepted_kw": p,
            "market_price": lam,
            "price": lam,
            "energy_kwh": energy,
            "payment": energy * lam / 1000.0,
            "surplus": value(p),
            "best_surplus": value(best),
            "reference": value(low),
            "curve": True,
        }
    )


def _keys(m) -> list[str]:
    """What a block's price depends on: its period, its bus on a feeder, and its
    connection (phase) on a three-phase one."""
    if m.feeder is None:
        return ["period"]
    return ["bus", "phase", "period"] if _three_phase(m) else ["bus", "period"]


def _three_phase(m) -> bool:
    return m.handles.formulation == "lindist3flow"


def _block_phases(m) -> pd.Series:
    """Each block's connection: its ``phase``, or "abc" (balanced) without one."""
    return m.bids["phase"] if "phase" in m.bids else pd.Series("abc", index=m.bids.index)


def _block_prices(m, prices: pd.DataFrame) -> pd.DataFrame:
    """The price of each (``_keys``) a block may have, from the market's prices: on a
    three-phase feeder the price of each connection the bids use, the mean of its
    phases' prices (:func:`~gridmarkets.networks.three_phase.connection_prices`: a block
    on k phases injects q/k on each, so its marginal value is that mean)."""
    if m.feeder is None or not _three_phase(m):
        return prices.drop_duplicates(_keys(m))
    from gridmarkets.networks.three_phase import connection_prices

    phases = set(_block_phases(m)) | set(_curve_phases(m))
    phases |= {"abc"} if m.participant_specs else set()  # participants are balanced
    return connection_prices(prices, sorted(phases))


def _unresolved_blocks(m) -> np.ndarray:
    """Divisible blocks no larger than the solver resolves (module docstring, Scale)."""
    return ~_fixed_blocks(m) & (m.bids["quantity_kw"].to_numpy() <= _RESOLUTION_KW)


def _accept_at_prices(m, blocks: np.ndarray, prices: pd.DataFrame) -> None:
    """Decide these blocks by their own merit order against the resolved market (see
    :func:`_residual_merit_order`), per :func:`_keys`; set in the model, so its bus
    injections and the AC check see them."""
    table = m.bids.assign(phase=_block_phases(m))
    rows = table.loc[blocks, [*_keys(m), "side", "price", "quantity_kw"]]
    at = prices.set_index(_keys(m))
    where = rows["period"] if m.feeder is None else pd.MultiIndex.from_frame(rows[_keys(m)])
    for end, column in (("low", "price_low"), ("high", "price_high")):
        rows[end] = at.get(column, at["price"]).reindex(where).to_numpy()
    for _, group in rows.groupby(_keys(m), dropna=False):
        for block, quantity in _residual_merit_order(group).items():
            m.accepted_kw[block].set_value(quantity)


def _residual_merit_order(group: pd.DataFrame) -> dict:
    """Accepted kW of blocks too small for the solver, by walking their merit order
    against the resolved market, which buys any amount at its interval's low end and
    sells any amount at its high end (the prices at which a resolved block still has
    room or would be displaced). Blocks at a tie are not accepted. Like the LP, this
    leaves an imbalance of at most their own size: below what the solver resolves."""
    inf = float("inf")

    def blocks(side: str) -> list[tuple]:
        rows = group[group["side"] == side]
        return list(zip(rows["price"], rows.index, rows["quantity_kw"], strict=True))

    market_sells, market_buys = (
        (group["high"].iloc[0], None, inf),
        (group["low"].iloc[0], None, inf),
    )
    sells = sorted([*blocks("sell"), market_sells], key=lambda row: row[0])
    buys = sorted([*blocks("buy"), market_buys], key=lambda row: -row[0])
    accepted = dict.fromkeys(group.index, 0.0)
    left = {block: q for _, block, q in sells + buys if block is not None}
    i = j = 0
    while i < len(sells) and j < len(buys) and buys[j][0] > sells[i][0]:
        seller, buyer = sells[i][1], buys[j][1]
        if seller is None and buyer is None:
            break  # the resolved market with itself
        traded = min(left.get(seller, inf), left.get(buyer, inf))
        for block in (seller, buyer):
            if block is not None:
                accepted[block] += traded
                left[block] -= traded
        i += seller is not None and left[seller] == 0
        j += buyer is not None and left[buyer] == 0
    return accepted


def _at_bounds(accepted: pd.Series, offered: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(some, room): a block accepted above zero, and below its quantity (kW). Each to a
    millionth of the block but no more than the solver's resolution, and at least the
    noise of the solver's values for the blocks it resolves; "below its quantity" also
    to a few units of rounding of that quantity."""
    floor = np.where(offered <= _RESOLUTION_KW, 0.0, _NOISE_KW)
    tolerance = np.maximum(np.minimum(_REL_TOL * offered, _RESOLUTION_KW), floor)
    some = accepted > tolerance
    room = accepted < offered - np.maximum(tolerance, _ROUNDING * offered)
    return some, room


def _accepted_table(m) -> pd.DataFrame:
    table = m.bids
    accepted = np.array([v.value for v in m.accepted_kw.values()], dtype=float)
    q_per_kw = reactive_ratio(table)
    phase = {"phase": _block_phases(m)} if "phase" in table or _three_phase(m) else {}
    return pd.DataFrame(
        {
            "participant": table["participant"],
            "side": table["side"],
            "period": table["period"],
            "block": table["block"],
            "bus": table["bus"],
            **phase,
            "offered_kw": table["quantity_kw"],
            "bid_price": table["price"],
            "accepted_kw": np.clip(accepted, 0.0, table["quantity_kw"].to_numpy()),
            "q_kvar": q_per_kw * np.clip(accepted, 0.0, None),
            "fixed": _fixed_blocks(m),
        }
    )


def _fixed_blocks(m) -> np.ndarray:
    """True for blocks with a binary (all or nothing, or a minimum acceptance)."""
    fixed = np.zeros(len(m.bids), dtype=bool)
    if hasattr(m, "INTEGER_BIDS"):
        fixed[m.bids.index.get_indexer(list(m.INTEGER_BIDS))] = True
    return fixed


def _upstream_table(m) -> pd.DataFrame | None:
    if m.upstream is None:
        return None
    periods = list(m.PERIODS)
    imp, exp = m.upstream.per_period(periods)
    return pd.DataFrame(
        {
            "period": periods,
            "import_kw": [pyo.value(m.import_kw[t]) for t in periods],
            "export_kw": [pyo.value(m.export_kw[t]) for t in periods],
            "import_price": imp,
            "export_price": exp,
        }
    )


def _prices_table(m, nodal: pd.DataFrame, accepted, upstream) -> pd.DataFrame:
    """Nodal prices on a feeder. Without one, the period's dual (for a MILP the
    convex-hull price) with the interval of prices that support the cleared quantities.
    Where the dual lies in it, every price of the interval leaves every block at its
    best response, and ``price`` is its midpoint, or its finite end when the other is
    infinite (a market where one side does not trade: not the solver's arbitrary dual);
    else the dual (a MILP whose integer choices no single price supports)."""
    if m.feeder is not None:
        return nodal.assign(price_low=nodal["price"], price_high=nodal["price"])
    if m.participant_specs:  # their schedules are supported by the dual; not analysed
        table = nodal[["period", "price"]].drop_duplicates("period")
        return table.assign(
            price_low=table["price"], price_high=table["price"], dual=table["price"]
        )
    low, high = price_interval(accepted, upstream, m.upstream)
    table = nodal[["period", "price"]].drop_duplicates("period").set_index("period")
    table["price_low"] = low.reindex(table.index).fillna(-np.inf)
    table["price_high"] = high.reindex(table.index).fillna(np.inf)
    slack = _REL_TOL * np.maximum(1.0, table["price"].abs())
    inside = (table["price"] >= table["price_low"] - slack) & (
        table["price"] <= table["price_high"] + slack
    )
    low, high = table["price_low"], table["price_high"]
    finite_low, finite_high = np.isfinite(low), np.isfinite(high)
    table["dual"] = table["price"]
    chosen = np.select(
        [finite_low & finite_high, finite_high, finite_low],
        [(low + high) / 2, high, low],
        default=table["price"],
    )
    table["price"] = np.where(inside, chosen, table["price"])
    return table.reset_index()


def price_interval(
    accepted: pd.DataFrame, upstream: pd.DataFrame | None, spec: Upstream | None
) -> tuple[pd.Series, pd.Series]:
    """The prices per period that support the cleared quantities (currency/MWh).

    A block accepted above zero bounds the price from its side (an offer from below,
    a bid from above); a block not fully accepted bounds it from the other side; the
    upstream import and export act as an offer and a bid at their tariffs up to their
    capacity; an indivisible block counts as any other. "Above zero" and "not fully"
    are to :func:`_at_bounds`. Where a period's low end is above its high end, no price
    supports every block (a MILP's integer choices).
    """
    some, room = _at_bounds(accepted["accepted_kw"], accepted["offered_kw"])
    sell, buy = accepted["side"] == "sell", accepted["side"] == "buy"
    lows = [
        accepted.loc[sell & some, ["period", "bid_price"]],
        accepted.loc[buy & room, ["period", "bid_price"]],
    ]
    highs = [
        accepted.loc[sell & room, ["period", "bid_price"]],
        accepted.loc[buy & some, ["period", "bid_price"]],
    ]
    if upstream is not None:
        cap = np.inf if spec.capacity_kw is None else spec.capacity_kw
        flows = upstream.rename(columns={"import_price": "ip", "export_price": "ep"})
        noise = _NOISE_KW + _REL_TOL * (0.0 if np.isinf(cap) else cap)
        lows += [
            _as_bound(flows, flows["import_kw"] > noise, "ip"),
            _as_bound(flows, flows["export_kw"] < cap - noise, "ep"),
        ]
        highs += [
            _as_bound(flows, flows["import_kw"] < cap - noise, "ip"),
            _as_bound(flows, flows["export_kw"] > noise, "ep"),
        ]
    low = pd.concat(lows).groupby("period")["bid_price"].max()
    high = pd.concat(highs).groupby("period")["bid_price"].min()
    return low, high


def _as_bound(flows: pd.DataFrame, mask: pd.Series, column: str) -> pd.DataFrame:
    return flows.loc[mask, ["period", column]].rename(columns={column: "bid_price"})


def _settle(accepted, prices, m, pricing: str) -> pd.DataFrame:
    """Each block with its market price (``prices``: one per :func:`_keys`, a block's on
    a three-phase feeder that of its connection), settlement price, energy, payment,
    surplus and the surplus of the block's best response at the settlement price."""
    settled = accepted.merge(
        prices[[*_keys(m), "price"]].rename(columns={"price": "market_price"}),
        on=_keys(m),
        how="left",
    )
    own = pricing == "pay_as_bid"
    settled["price"] = settled["bid_price"] if own else settled["market_price"]
    sign = np.where(settled["side"] == "buy", 1.0, -1.0)
    per_kw = m.period_hours / 1000.0
    settled["energy_kwh"] = sign * settled["accepted_kw"] * m.period_hours
    settled["payment"] = settled["energy_kwh"] * settled["price"] / 1000.0
    margin = sign * (settled["bid_price"] - settled["price"]) * per_kw  # currency per kW
    settled["surplus"] = margin * settled["accepted_kw"]  # value - paid; paid - cost
    settled["best_surplus"] = np.maximum(margin, 0.0) * settled["offered_kw"]
    settled["reference"] = 0.0  # a block's alternative: not trading
    settled["curve"] = False
    return settled


def _settlement_table(settled: pd.DataFrame) -> pd.DataFrame:
    """Per participant: energy, payment, surplus; ``uplift``, what it would lose at the
    prices against its alternative, paid back to it; ``gain`` against its alternative
    (surplus - reference + uplift; the alternative is not trading, for a curve with a
    must-run minimum producing or consuming only that minimum); and
    ``lost_opportunity``, its best response's surplus beyond the cleared one (a block's
    best response is all or nothing, whether or not it is divisible; a curve's in
    closed form, :func:`_settle_curves`)."""
    columns = ["energy_kwh", "payment", "surplus", "best_surplus", "reference"]
    table = settled.groupby("participant", sort=False)[columns].sum().reset_index()
    reference = table.pop("reference")
    table["uplift"] = np.maximum(0.0, reference - table["surplus"])
    table["gain"] = table["surplus"] - reference + table["uplift"]
    table["lost_opportunity"] = table.pop("best_surplus") - table["surplus"]
    return table


def _parties_table(m, settlement, settled, prices, upstream) -> pd.DataFrame:
    """Who pays what (currency; positive: paid by the party). The operator's side is
    computed apart from the participants' payments: the network's own bus injections at
    the nodal prices (congestion and loss rents), the upstream interface at the root's
    price against the tariffs, the pay-as-bid margin, less the uplift it pays."""
    hours = m.period_hours / 1000.0
    nodal = prices.drop_duplicates(_keys(m)).set_index(_keys(m))["price"]  # per phase on 3ph
    injected = _bus_injection_values(m.handles)
    if m.feeder is None:
        injected = injected.groupby(level="period").sum()
    network_rent = -float((nodal.reindex(injected.index).fillna(0.0) * injected).sum()) * hours
    interface_rent = upstream_cost = 0.0
    if upstream is not None:
        root = nodal.xs(m.feeder.root, level="bus") if m.feeder is not None else nodal
        # the root's price is the same on every phase (the source's free split); the
        # upstream grid's "abc" injection is worth their mean
        root = root.groupby(level="period").mean()
        net = upstream.set_index("period")
        upstream_cost = _upstream_cost(upstream, hours)
        imported = net["import_kw"] - net["export_kw"]
        interface_rent = float((root.reindex(net.index) * imported).sum()) * hours - upstream_cost
    margin = float(
        ((settled["price"] - settled["market_price"]) * settled["energy_kwh"]).sum() / 1000.0
    )
    operator = network_rent + interface_rent + margin - float(settlement["uplift"].sum())
    return pd.DataFrame(
        {
            "party": [*settlement["participant"], UPSTREAM, "operator"],
            "role": ["participant"] * len(settlement) + [UPSTREAM, "operator"],
            "payment": [*(settlement["payment"] - settlement["uplift"]), -upstream_cost, -operator],
        }
    )


def _bus_injection_values(handles) -> pd.Series:
    """The network formulation's solved net injection (kW) by (bus, period), or by
    (bus, phase, period) on a three-phase feeder (each connection split over its phases)."""
    from gridmarkets.networks import LinearInjections

    if handles.formulation == "lindist3flow":
        p = handles.phase_injection_values()[0]
        index = pd.MultiIndex.from_product(
            [handles.feeder.buses.index, ["a", "b", "c"], handles.periods],
            names=["bus", "phase", "period"],
        )
        return pd.Series(p.ravel(), index=index)
    p = handles.p_kw
    if isinstance(p, LinearInjections):
        values = p.values_by_key()
    else:
        values = np.array([pyo.value(e) for e in p.values()], dtype=float)
    index = pd.MultiIndex.from_tuples(list(p), names=["bus", "period"])
    return pd.Series(values, index=index)


def _upstream_cost(upstream: pd.DataFrame, per_kw: float) -> float:
    return float(
        (upstream["import_kw"] * upstream["import_price"]).sum() * per_kw
        - (upstream["export_kw"] * upstream["export_price"]).sum() * per_kw
    )


def _kpis(m, solution: Solution, settled: pd.DataFrame, upstream) -> dict[str, float]:
    hours = m.period_hours
    buy, sell = settled["side"] == "buy", settled["side"] == "sell"
    upstream_cost = 0.0 if upstream is None else _upstream_cost(upstream, hours / 1000)
    payments_in = float(settled.loc[buy, "payment"].sum())
    payments_out = float(-settled.loc[sell, "payment"].sum())
    unmatched = (settled["offered_kw"] - settled["accepted_kw"]).where(~settled["curve"], 0.0)
    unmatched = unmatched * hours  # blocks only: a curve below its maximum is its choice
    return {
        "social_welfare": solution.objective,
        "buyers_surplus": float(settled.loc[buy, "surplus"].sum()),
        "sellers_surplus": float(settled.loc[sell, "surplus"].sum()),
        "payments_in": payments_in,
        "payments_out": payments_out,
        "upstream_cost": upstream_cost,
        # what the operator keeps: congestion rents, minus what the network itself
        # consumes (transformer no-load losses) at the prices
        "merchandising_surplus": payments_in - payments_out - upstream_cost,
        "traded_kwh": float(settled.loc[sell, "accepted_kw"].sum() * hours),
        "import_kwh": 0.0 if upstream is None else float(upstream["import_kw"].sum() * hours),
        "export_kwh": 0.0 if upstream is None else float(upstream["export_kw"].sum() * hours),
        "unserved_kwh": float(unmatched[buy].sum()),
        "curtailed_kwh": float(unmatched[sell].sum()),
    }


def _certificates(
    m, settlement: pd.DataFrame, parties: pd.DataFrame, responses: pd.DataFrame | None = None
) -> dict[str, float]:
    """Individual rationality, best responses and the closed settlement (module docstring)."""
    stake = (m.bids["price"].abs() * m.bids["quantity_kw"]).sum() * m.period_hours / 1000
    if len(m.curves):  # a bound on |cost| or |utility| over [0, p_max]
        c = m.curves
        stake += ((c["a"] * c["p_max_kw"] + c["b"].abs()) * c["p_max_kw"]).sum() * (
            m.period_hours / 1000
        )
    if responses is not None:  # participants: their best profits
        stake += responses["best_profit"].abs().sum()
    tolerance = _REL_TOL * float(stake)
    empty = settlement.empty
    min_gain = 0.0 if empty else float(settlement["gain"].min())
    lost = settlement["lost_opportunity"]
    return {
        "uplift": float(settlement["uplift"].sum()),
        "lost_opportunity": float(lost.sum()),
        "max_lost_opportunity": 0.0 if empty else float(lost.max()),
        "min_gain": min_gain,
        "gain_tolerance": tolerance,
        "individually_rational": float(min_gain >= -tolerance),
        "reconciliation_error": float(parties["payment"].sum()),
    }


def clear(
    bids: pd.DataFrame | None,
    *,
    curves: pd.DataFrame | None = None,
    upstream: Upstream | None = None,
    network: Feeder | None = None,
    pricing: Literal["uniform", "pay_as_bid"] = "uniform",
    solve_options: dict[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Build, solve and report a market clearing in one call (see :func:`build`, whose
    options include ``decompose``: the periods solved apart, by default when nothing
    links them)."""
    _check_pricing(pricing, curves, build_options.get("participants"))
    m = build(bids, curves=curves, upstream=upstream, network=network, **build_options)
    solution = solve(m, **(solve_options or {}))
    return results(m, solution, pricing)


def bus_injections(result: Result) -> pd.DataFrame:
    """Participants' net injection (kW) per bus (rows) and period (columns), blocks
    and curves."""
    accepted = result.accepted
    if "accepted_curves" in result.tables:
        accepted = pd.concat([accepted, result.tables["accepted_curves"]], ignore_index=True)
    sign = np.where(accepted["side"] == "sell", 1.0, -1.0)
    return accepted.assign(p_kw=sign * accepted["accepted_kw"]).pivot_table(
        index="bus", columns="period", values="p_kw", aggfunc="sum", fill_value=0.0
    )
