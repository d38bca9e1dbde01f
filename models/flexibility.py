"""Local flexibility market: the DSO and the TSO buy flexibility from one pool of offers.

Buyers. The DSO needs the feeder's limits respected: :func:`dso_needs` runs a baseline
injection schedule through LinDistFlow and pandapower's AC power flow and lists every
branch above its rating and every bus outside its voltage band, with the linear bound
that keeps the AC value inside the limit (the baseline's linearisation error taken
off). The TSO needs reserve capacity per product and period; the products' rules
(direction, activation time, duration, price cap) are read from
``gridmarkets/data/products/tso_products.yaml`` (:func:`load_products`), which cites
the published specification of each rule and marks the illustrative defaults.

Sellers. An offers table (:data:`OFFER_COLUMNS`): a seller at a bus offers, per period,
a quantity of one product in one direction at a capacity price (currency per MW per
hour) and an activation price (currency per MWh). Products are the TSO's (``fcr_n``,
``fcr_d_up``, ...), ``dso`` (active power for the DSO: ``up`` injects more, ``down``
less) and ``reactive`` (kvar for the DSO: ``up`` injects, ``down`` absorbs; the
quantity column holds kvar). An optional resources table bounds what one seller can
deliver over all its offers per period: its upward and downward headroom and its
inverter's apparent power around its baseline point. :func:`offers_from_prosumer`
derives both tables from a prosumer's baseline EMS schedule and devices.

Reactive power of active-power offers (TSO products and ``dso``): optional columns
``q_kvar`` (kvar at full acceptance) or ``power_factor`` pf in (0, 1] (``tan(acos(pf))``
kvar per kW), as for the LEM's bids (:func:`gridmarkets.models.lem.reactive_ratio`);
neither given (or empty on a row): unity power factor, no kvar, the default. The kvar
follows the kW in the offer's direction, lagging like a generator: an ``up`` offer
that injects x kW more also injects ratio x kvar more, a ``down`` offer injects x kW
and ratio x kvar less (a symmetric TSO offer moves Q with P in each activation). A
``reactive`` offer is kvar on its own and takes neither column.

Pool clearing (:func:`build`, :func:`clear`). Least procurement cost::

    min  sum_o dt/1000 (capacity_price[o] + activation_price[o] [o is the DSO's]) x[o]
         + dt/1000 shortfall_price sum_{k,t} shortfall[k,t]
    s.t. sum_{o in k,t} x[o] + shortfall[k,t] >= requirement[k,t]      (TSO, per product)
         LinDistFlow limits in every scenario s of {dispatch, tso_up, tso_down}
         the DSO's needs (tightened linear limits) in every scenario
         resource headroom and apparent power of every seller in every scenario

The ``dispatch`` scenario is the baseline plus the DSO's activated offers; ``tso_up``
adds every accepted upward (and symmetric) TSO reserve fully activated, ``tso_down``
every downward one; so activating the TSO's reserves in either direction keeps the
distribution grid within its limits. The DSO's offers are activated (paid capacity
and activation); the TSO's are reserved (the clearing pays capacity; activation is
settled at the activation price when it happens). Without a network only the TSO's
requirements bind and the clearing is a merit order per product.

Pricing: ``pay_as_bid`` pays each accepted offer its own price; ``uniform`` pays, per
product, direction, period and zone (the buses behind the same binding thermal limits,
:func:`zones`), the highest price accepted (capacity price for the
TSO's products, capacity plus activation for the DSO's). The dual of each TSO
requirement is reported as its ``marginal_price`` (with a network it includes the
cost the grid adds).

Bilateral mode (:func:`bilateral`): the DSO alone buys from the buses whose
sensitivity to a need is at least ``min_sensitivity`` (the fall of a branch's loading
per kW or kvar, linearised in P and Q at its baseline flow, or the voltage change per
kW or kvar), pay-as-bid; voltage needs are met through their sensitivities, thermal
needs keep the branch's flow after the purchase, P and Q, inside a polygon of the
target loading, so kvar bought against an overvoltage counts on the branches it loads;
:func:`compare` sets its cost beside the pool.

Three-phase feeders (``formulation=LinDist3Flow()``): an offer may carry ``phase``
("a", "bc", "abc", ...; missing: "abc"), the phases its resource is connected to
(a k-phase offer moves a k-th of its kW on each), and the baseline may be given per
phase (rows (bus, phase), phases "a", "b", "c"). Every scenario's grid is a
LinDist3Flow, so the DSO buys until each phase keeps its own voltage and thermal limits;
its needs are those per-phase limits (a ``needs`` table, which bounds balanced flows, is
refused), and the AC check is pandapower's ``runpp_3ph``. ``feeder_prices`` (each
scenario's nodal prices, per phase on three phases) tell what one more kW of baseline
demand at a bus would cost the procurement.

Units: kW, kvar, currency per MWh (capacity: per MW and hour), currency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from importlib import resources as package_resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import InfeasibleError, InputError
from gridmarkets.inputs import read_yaml_file
from gridmarkets.models.lem import check_reactive, reactive_ratio
from gridmarkets.results import Result
from gridmarkets.solvers import Solution, record_build_time, solve

DSO_PRODUCT = "dso"
REACTIVE_PRODUCT = "reactive"
DSO_PRODUCTS = (DSO_PRODUCT, REACTIVE_PRODUCT)
OFFER_COLUMNS = [
    "seller",
    "bus",
    "period",
    "product",
    "direction",
    "quantity_kw",
    "capacity_price",
    "activation_price",
]
RESOURCE_COLUMNS = [
    "seller",
    "period",
    "p_baseline_kw",
    "q_baseline_kvar",
    "up_kw",
    "down_kw",
    "s_max_kva",
]
REACTIVE_COLUMNS = ["q_kvar", "power_factor"]
SCENARIOS = ("dispatch", "tso_up", "tso_down")
_TOL = 1e-6


# --- TSO products -----------------------------------------------------------------------


def products_path() -> Path:
    """The shipped TSO product rules (``gridmarkets/data/products/tso_products.yaml``)."""
    return Path(str(package_resources.files("gridmarkets.data") / "products" / "tso_products.yaml"))


def load_products(path: str | Path | None = None) -> pd.DataFrame:
    """The TSO products' rules as a table indexed by product.

    Parameters
    ----------
    path : a YAML file in the format of the shipped one (None: the shipped one).

    Returns
    -------
    DataFrame with columns name, direction (up, down, symmetric), activation_time_s,
    duration_min, price_cap_per_mwh (capacity, currency per MW and hour),
    requirement_kw, min_bid_mw, sources (list) and illustrative (list of the fields
    that are illustrative defaults, not published values).
    """
    path = Path(path) if path is not None else products_path()
    data = read_yaml_file(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: expected a mapping of products, each a mapping")
    table = pd.DataFrame.from_dict(data, orient="index").rename_axis("product")
    bad = ~table["direction"].isin(["up", "down", "symmetric"])
    if bad.any():
        raise InputError(f"{path}: {table.index[bad][0]}.direction must be up, down or symmetric")
    return table


def tso_requirements(
    products: pd.DataFrame,
    periods: list[int],
    requirement_kw: Mapping[str, float | list[float]] | None = None,
) -> pd.DataFrame:
    """The TSO's required capacity per product and period (kW).

    Parameters
    ----------
    products : :func:`load_products`' table.
    periods : the market's periods.
    requirement_kw : per product a number or one value per period; None takes each
        product's ``requirement_kw`` from the products table.

    Returns
    -------
    DataFrame with columns product, period, requirement_kw (rows with 0 left out).
    """
    wanted = requirement_kw if requirement_kw is not None else products["requirement_kw"]
    rows = []
    for product, value in dict(wanted).items():
        if product not in products.index:
            raise InputError(
                f"tso requirement: {product!r} is not a product ({list(products.index)})"
            )
        values = value if isinstance(value, list | tuple) else [value] * len(periods)
        if len(values) != len(periods):
            raise InputError(
                f"tso requirement {product}: {len(values)} values, {len(periods)} periods"
            )
        rows += [(product, t, float(v)) for t, v in zip(periods, values, strict=True) if v > 0]
    return pd.DataFrame(rows, columns=["product", "period", "requirement_kw"])


# --- the DSO's needs --------------------------------------------------------------------


def dso_needs(
    feeder,
    baseline_p_kw: pd.DataFrame,
    baseline_q_kvar: pd.DataFrame | None = None,
    *,
    loading_margin_percent: float = 2.0,
    voltage_margin_pu: float = 0.002,
) -> pd.DataFrame:
    """What the DSO must fix in a baseline schedule: its AC and linear limit violations.

    Parameters
    ----------
    feeder : the :class:`~gridmarkets.networks.Feeder`.
    baseline_p_kw, baseline_q_kvar : the baseline net injections (kW, kvar; buses as
        rows, periods as columns; positive into the grid).
    loading_margin_percent, voltage_margin_pu : how far inside the limit the AC value
        is aimed at, to absorb the linearisation error's change after activation.

    Returns
    -------
    DataFrame, one row per violated element and period, with columns element
    ("branch" or "bus"), index (feeder branch index or bus), period, limit_kind
    ("thermal", "voltage_upper", "voltage_lower"), value_linear, value_ac (loading in %
    or voltage in pu), limit, excess (how far the AC value lies beyond the limit) and
    target_linear: the bound on the linear value that puts the AC value at the limit
    less the margin (thermal: scaled by linear/AC loading; voltage: shifted by the AC
    minus linear difference).
    """
    from gridmarkets.networks import ac_check

    q = baseline_q_kvar if baseline_q_kvar is not None else 0.0 * baseline_p_kw
    check = ac_check(feeder, baseline_p_kw, q)
    return needs_from_check(check, loading_margin_percent, voltage_margin_pu)


def needs_from_check(
    check, loading_margin_percent: float = 2.0, voltage_margin_pu: float = 0.002
) -> pd.DataFrame:
    """The needs table of :func:`dso_needs` from an existing AC check.

    Parameters
    ----------
    check : a :class:`~gridmarkets.networks.ACCheck` of the baseline.
    loading_margin_percent, voltage_margin_pu : as in :func:`dso_needs`.

    Returns
    -------
    DataFrame in :func:`dso_needs`' format.
    """
    br = check.branches
    over = br[(br["loading_percent_ac"] > 100.0) | (br["loading_percent_linear"] > 100.0)]
    ratio = over["loading_percent_linear"] / over["loading_percent_ac"].clip(lower=1e-9)
    thermal = pd.DataFrame(
        {
            "element": "branch",
            "index": over["branch"],
            "period": over["period"],
            "limit_kind": "thermal",
            "value_linear": over["loading_percent_linear"],
            "value_ac": over["loading_percent_ac"],
            "limit": 100.0,
            "excess": over["loading_percent_ac"] - 100.0,
            "target_linear": (100.0 - loading_margin_percent) * ratio.clip(upper=1.0),
        }
    )
    frames = [thermal]
    b = check.buses
    shift = b["v_pu_ac"] - b["v_pu_linear"]
    for kind, column, sign in (
        ("voltage_upper", "vmax_pu", 1.0),
        ("voltage_lower", "vmin_pu", -1.0),
    ):
        bad = b[
            (sign * (b["v_pu_ac"] - b[column]) > 0) | (sign * (b["v_pu_linear"] - b[column]) > 0)
        ]
        frames.append(
            pd.DataFrame(
                {
                    "element": "bus",
                    "index": bad["bus"],
                    "period": bad["period"],
                    "limit_kind": kind,
                    "value_linear": bad["v_pu_linear"],
                    "value_ac": bad["v_pu_ac"],
                    "limit": bad[column],
                    "excess": sign * (bad["v_pu_ac"] - bad[column]),
                    "target_linear": bad[column]
                    - sign * voltage_margin_pu
                    - np.maximum(sign * shift[bad.index], 0.0) * sign,
                }
            )
        )
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(thermal.columns))
    return pd.concat(frames, ignore_index=True)


# --- offers ---------------------------------------------------------------------------


def prepare_offers(offers: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """Check an offers table; fill activation_price (0) and period (0) where missing.

    The optional ``q_kvar`` / ``power_factor`` columns (active-power offers only; see
    the module docstring) are checked as the LEM's bids and kept.
    """
    table = offers.reset_index(drop=True).copy()
    table["period"] = table.get("period", 0)
    table["activation_price"] = table.get("activation_price", 0.0)
    missing = set(OFFER_COLUMNS) - set(table.columns)
    if missing:
        raise InputError(f"offers: missing column(s) {sorted(missing)}")
    known = set(products.index) | set(DSO_PRODUCTS)
    _reject(table, ~table["product"].isin(known), "product", f"is not one of {sorted(known)}")
    symmetric = table["product"].map(products["direction"]).eq("symmetric")
    allowed = np.where(
        symmetric, table["direction"].eq("symmetric"), table["direction"].isin(["up", "down"])
    )
    _reject(table, ~allowed, "direction", "must be symmetric for symmetric products, else up/down")
    for column in ("quantity_kw", "capacity_price", "activation_price"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
        _reject(table, ~np.isfinite(table[column]), column, "must be a number")
    _reject(table, table["quantity_kw"] < 0, "quantity_kw", "must not be negative")
    table["period"] = table["period"].astype(int)
    reactive_columns = [c for c in REACTIVE_COLUMNS if c in table]
    check_reactive(table, _reject)
    reactive = table["product"].eq(REACTIVE_PRODUCT)
    for column in reactive_columns:
        _reject(
            table,
            reactive & table[column].notna(),
            column,
            "is for active-power offers; a reactive offer's quantity is its kvar",
        )
        table[column] = pd.to_numeric(table[column], errors="coerce")
    if "phase" in table:
        from gridmarkets.networks.three_phase import connection

        phase = table["phase"].map(connection)
        _reject(table, phase.isna(), "phase", "is not a, b, c or a combination of them")
        table["phase"] = phase
        reactive_columns.append("phase")
    return table[OFFER_COLUMNS + reactive_columns]


def q_per_kw(table: pd.DataFrame) -> np.ndarray:
    """kvar per kW of each offer in its own direction (0 for reactive offers and at
    unity power factor; see the module docstring)."""
    ratio = reactive_ratio(table)
    return np.where(table["product"].eq(REACTIVE_PRODUCT).to_numpy(), 0.0, ratio)


def _reject(table: pd.DataFrame, mask: pd.Series, column: str, reason: str) -> None:
    if mask.any():
        row = table[mask].iloc[0]
        value = row[column].item() if isinstance(row[column], np.generic) else row[column]
        raise InputError(
            f"offers row {row.name} (seller {row['seller']!r}): {column} {value!r} "
            f"{reason} ({int(mask.sum())} such row(s))"
        )


def _direction_signs(table: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """Per offer its injection sign in each scenario (0: not active there)."""
    tso = ~table["product"].isin(DSO_PRODUCTS)
    active_dso = table["product"].eq(DSO_PRODUCT)
    up = np.where(table["direction"].isin(["up", "symmetric"]), 1.0, 0.0)
    down = np.where(table["direction"].isin(["down", "symmetric"]), 1.0, 0.0)
    dso_sign = np.where(active_dso, up - down, 0.0)
    return pd.DataFrame(
        {
            "dispatch": dso_sign,
            "tso_up": dso_sign + np.where(tso, up, 0.0),
            "tso_down": dso_sign - np.where(tso, down, 0.0),
        },
        index=table.index,
    )


def offers_from_prosumer(
    result: Result,
    prosumers: Mapping[str, Any],
    prices: Mapping[str, tuple[float, float]],
    *,
    products: pd.DataFrame | None = None,
    inverter_kva: Mapping[str, float] | None = None,
    period_hours: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Offers and resources of homes from their baseline EMS schedule and devices.

    What a home can still move around its schedule, per period: PV may be curtailed
    (down) by what it produces and raised (up) by what it curtails; a battery may
    discharge up to its rating and charge up to its rating, each only as long as its
    state of charge sustains the product's duration; a plugged-in EV may stop charging
    (up) or charge at its rating (down). Reactive power is offered within
    ``inverter_kva`` around the PV's scheduled output.

    Parameters
    ----------
    result : the :func:`gridmarkets.models.prosumer.schedule` result of the homes.
    prosumers : the homes' :class:`~gridmarkets.models.prosumer.ProsumerSpec` by id
        (each with a ``bus``).
    prices : per product offered ``(capacity_price, activation_price)``; each home
        offers its whole headroom to each product (the resources table keeps the sum
        within the headroom).
    products : the TSO products (for durations); None: the shipped ones.
    inverter_kva : apparent-power rating of each home's inverter (kVA); homes left out
        offer no reactive power.
    period_hours : length of a period (hours).

    Returns
    -------
    (offers, resources) : tables in the formats of :data:`OFFER_COLUMNS` and
    :data:`RESOURCE_COLUMNS`.
    """
    products = load_products() if products is None else products
    power = result.power.pivot_table(
        index=["prosumer", "period"], columns="device", values="p_kw", aggfunc="sum"
    ).fillna(0.0)
    storage = result.storage.set_index(["prosumer", "device", "period"])
    curtailed = result.grid.set_index(["prosumer", "period"])["curtailed_kw"]
    offers, resources = [], []
    for pid, spec in prosumers.items():
        for t in sorted(power.loc[pid].index):
            row = power.loc[(pid, t)]
            free, stored = _headroom(spec, row, float(curtailed.get((pid, t), 0.0)), t)
            energy = _energy_room(spec, storage, pid, t)
            s_max = (inverter_kva or {}).get(pid, np.nan)
            p0 = float(row.get("pv", 0.0))
            total = {d: free[d] + stored[d] for d in ("up", "down")}
            resources.append((pid, t, p0, 0.0, total["up"], total["down"], s_max))
            for product, (cap_price, act_price) in prices.items():
                hours = _duration_hours(product, products, period_hours)
                rooms = {d: free[d] + min(stored[d], energy[d] / hours) for d in free}
                for direction, room in _product_rooms(product, products, rooms, s_max, p0):
                    offers.append(
                        (pid, spec.bus, t, product, direction, room, cap_price, act_price)
                    )
    return (
        pd.DataFrame(offers, columns=OFFER_COLUMNS),
        pd.DataFrame(resources, columns=RESOURCE_COLUMNS),
    )


def _product_rooms(product, products, room, s_max, p0) -> list[tuple]:
    """(direction, kW) a home can offer to one product from its headroom ``room``."""
    if product == REACTIVE_PRODUCT:
        if not np.isfinite(s_max):
            return []
        q_room = math.sqrt(max(s_max**2 - p0**2, 0.0))
        return [("up", q_room), ("down", q_room)]
    kind = products.at[product, "direction"] if product in products.index else "both"
    if kind == "symmetric":
        offered = [("symmetric", min(room.values()))]
    else:
        offered = [(d, room[d]) for d in ("up", "down") if kind in (d, "both")]
    return [(d, q) for d, q in offered if q > _TOL]


def _duration_hours(product: str, products: pd.DataFrame, period_hours: float) -> float:
    if product in products.index:
        return float(products.at[product, "duration_min"]) / 60.0
    return period_hours


def _headroom(spec, row: pd.Series, curtailed: float, t: int) -> tuple[dict, dict]:
    """Headroom around a home's schedule (kW): of its devices without an energy limit
    within the period (PV, EV) and of its battery, whose energy limits it further."""
    free, stored = {"up": 0.0, "down": 0.0}, {"up": 0.0, "down": 0.0}
    if spec.pv is not None:
        free["up"] += curtailed
        free["down"] += float(row.get("pv", 0.0))
    if spec.ev is not None and t in spec.ev.plugged([t]):
        charge = -float(row.get("ev", 0.0))
        free["up"] += charge
        free["down"] += spec.ev.p_charge_max_kw - charge
    if spec.battery is not None:
        p = float(row.get("battery", 0.0))
        stored["up"] = max(spec.battery.p_discharge_max - p, 0.0)
        stored["down"] = max(p + spec.battery.p_charge_max_kw, 0.0)
    return free, stored


def _energy_room(spec, storage: pd.DataFrame, pid: str, t: int) -> dict[str, float]:
    """Energy the battery can still deliver (up) or absorb (down) in period t (kWh),
    from the lower (upper) of its state of charge before and after the period."""
    if spec.battery is None:
        return {"up": np.inf, "down": np.inf}
    b = spec.battery
    after = float(storage.loc[(pid, "battery", t), "soc_kwh"])
    key = (pid, "battery", t - 1)
    before = float(storage.loc[key, "soc_kwh"]) if key in storage.index else b.soc_initial_kwh
    return {
        "up": (min(before, after) - b.soc_min_kwh) * b.eta_discharge,
        "down": (b.soc_max - max(before, after)) / b.eta_charge,
    }


# --- pool clearing ---------------------------------------------------------------------


def build(
    offers: pd.DataFrame,
    *,
    products: pd.DataFrame | None = None,
    requirements: pd.DataFrame | None = None,
    network: Any = None,
    baseline_p_kw: pd.DataFrame | None = None,
    baseline_q_kvar: pd.DataFrame | None = None,
    needs: pd.DataFrame | None = None,
    resources: pd.DataFrame | None = None,
    period_hours: float = 1.0,
    formulation: Any = None,
    shortfall_price: float = 10_000.0,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
) -> pyo.ConcreteModel:
    """Build the pool clearing (see the module docstring for the problem).

    Parameters
    ----------
    offers : table of :data:`OFFER_COLUMNS` (see :func:`prepare_offers`).
    products : the TSO products (:func:`load_products`; None: the shipped ones).
    requirements : product, period, requirement_kw (:func:`tso_requirements`); None:
        no TSO requirement.
    network : a :class:`~gridmarkets.networks.Feeder`, or None (no grid: TSO only).
    baseline_p_kw, baseline_q_kvar : the baseline injections (buses x periods) the
        offers move; required with a network.
    needs : :func:`dso_needs`' table: tightened limits per element and period.
    resources : table of :data:`RESOURCE_COLUMNS` limiting each seller per period.
    formulation : a :class:`~gridmarkets.networks.NetworkFormulation` for every
        scenario's grid (default LinDistFlow on ``network``).
    shortfall_price : cost of a kW of TSO requirement left unmet (currency per MW and
        hour), so an unmet requirement shows as a shortfall instead of infeasibility.
    extra : called with the model before it is returned, to add user constraints.

    Returns
    -------
    The Pyomo model (minimises ``procurement_cost``); with a network, scenario ``s``'s
    grid is ``model.scenario[s].network`` with its handles ``model.scenario[s].handles``.
    """
    started = time.perf_counter()
    products = load_products() if products is None else products
    table = prepare_offers(offers, products)
    requirements = requirements if requirements is not None else tso_requirements(products, [], {})
    m = pyo.ConcreteModel(name="flexibility")
    m.offers, m.products, m.requirements = table, products, requirements.reset_index(drop=True)
    m.feeder, m.period_hours = network, period_hours
    m.signs = _direction_signs(table, products)
    m.offers["q_per_kw"] = q_per_kw(table)
    periods = sorted(set(table["period"]) | set(m.requirements["period"]) | _columns(baseline_p_kw))
    m.PERIODS = pyo.Set(initialize=periods, doc="market periods")
    _add_acceptance(m, table, products)
    _add_requirements(m)
    m.SCENARIOS = pyo.Set(initialize=_scenarios(m.signs), doc="dispatch and TSO activations")
    _add_resources(m, resources)
    if network is not None:
        _add_network(m, network, baseline_p_kw, baseline_q_kvar, formulation)
        _add_needs(m, needs if needs is not None else pd.DataFrame())
    _add_cost(m, shortfall_price)
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def _columns(frame) -> set:
    return set() if frame is None else {int(c) for c in frame.columns}


def _scenarios(signs: pd.DataFrame) -> list[str]:
    return ["dispatch"] + [
        s for s in ("tso_up", "tso_down") if (signs[s] != signs["dispatch"]).any()
    ]


def _add_acceptance(m, table: pd.DataFrame, products: pd.DataFrame) -> None:
    cap = table["product"].map(products["price_cap_per_mwh"]).fillna(np.inf)
    m.offers["above_cap"] = table["capacity_price"] > cap + _TOL
    quantity = table["quantity_kw"].where(~m.offers["above_cap"], 0.0).to_dict()
    m.OFFERS = pyo.Set(initialize=table.index.tolist(), doc="offers")
    m.accepted_kw = pyo.Var(
        m.OFFERS,
        bounds=lambda m, o: (0.0, quantity[o]),
        doc="x[o]: accepted quantity, 0 <= x[o] <= quantity_kw[o] (0 above the price cap)  "
        "(kW, kvar for reactive offers)",
    )


def _add_requirements(m) -> None:
    req = m.requirements
    keys = list(zip(req["product"], req["period"], strict=True))
    value = dict(zip(keys, req["requirement_kw"], strict=True))
    m.REQUIREMENTS = pyo.Set(initialize=keys, dimen=2, doc="(product, period) the TSO asks for")
    m.shortfall_kw = pyo.Var(m.REQUIREMENTS, bounds=(0, None), doc="unmet requirement (kW)")
    groups = m.offers.groupby(["product", "period"]).groups

    def rule(m, k, t):
        offered = sum(m.accepted_kw[o] for o in groups.get((k, t), []))
        return offered + m.shortfall_kw[k, t] >= value[k, t]

    m.tso_requirement = pyo.Constraint(
        m.REQUIREMENTS,
        rule=rule,
        doc="sum_{o in k,t} x[o] + shortfall[k,t] >= requirement_kw[k,t]  (kW); dual: "
        "marginal cost of reserve",
    )


def _seller_delta(m, rows: pd.Index, scenario: str, reactive: bool):
    """Change of a group of offers' injection in a scenario (kW or kvar expression):
    kW from the active-power offers; kvar from the reactive offers and from the
    active-power offers' kvar per kW (:func:`q_per_kw`)."""
    is_reactive = m.offers.loc[rows, "product"].eq(REACTIVE_PRODUCT).to_numpy()
    active_sign = m.signs.loc[rows, scenario].to_numpy()
    if reactive:
        own = np.where(m.offers.loc[rows, "direction"].eq("up"), 1.0, -1.0)
        sign = np.where(is_reactive, own, active_sign * m.offers.loc[rows, "q_per_kw"])
    else:
        sign = np.where(is_reactive, 0.0, active_sign)
    return sum(s * m.accepted_kw[o] for s, o in zip(sign, rows, strict=True) if s)


def _add_resources(m, resources: pd.DataFrame | None) -> None:
    table = pd.DataFrame(columns=RESOURCE_COLUMNS) if resources is None else resources
    table = table.set_index(["seller", "period"])
    groups = m.offers.groupby(["seller", "period"]).groups
    keys = [k for k in table.index if k in groups]
    m.RESOURCES = pyo.Set(initialize=keys, dimen=2, doc="(seller, period) with limits")
    off = m.offers
    active = ~off["product"].eq(REACTIVE_PRODUCT)

    def headroom(direction: str):
        def rule(m, s, t):
            limit = table.at[(s, t), f"{direction}_kw"]
            rows = [
                o
                for o in groups[s, t]
                if active[o] and off.at[o, "direction"] in (direction, "symmetric")
            ]
            if not rows or not np.isfinite(limit):
                return pyo.Constraint.Skip
            return sum(m.accepted_kw[o] for o in rows) <= limit

        return rule

    m.headroom_up = pyo.Constraint(
        m.RESOURCES, rule=headroom("up"), doc="sum_{o up or symmetric} x[o] <= up_kw[s,t]  (kW)"
    )
    m.headroom_down = pyo.Constraint(
        m.RESOURCES,
        rule=headroom("down"),
        doc="sum_{o down or symmetric} x[o] <= down_kw[s,t]  (kW)",
    )
    sides = 16
    m.INVERTER_SIDES = pyo.Set(initialize=range(sides), doc="sides of the inverter polygon")
    angle = 2 * math.pi / sides

    def apparent(m, s, t, k, scenario):
        p0, q0, s_max = table.loc[(s, t), ["p_baseline_kw", "q_baseline_kvar", "s_max_kva"]]
        if not np.isfinite(s_max):
            return pyo.Constraint.Skip
        p = p0 + _seller_delta(m, groups[s, t], scenario, False)
        q = q0 + _seller_delta(m, groups[s, t], scenario, True)
        if isinstance(p, float) and isinstance(q, float):
            return pyo.Constraint.Skip
        return math.cos(k * angle) * p + math.sin(k * angle) * q <= s_max

    m.inverter_rating = pyo.Constraint(
        m.RESOURCES,
        m.INVERTER_SIDES,
        m.SCENARIOS,
        rule=apparent,
        doc="cos(2 pi k/16) (p0 + dp[s]) + sin(2 pi k/16) (q0 + dq) <= s_max_kva  (kW): "
        "polygon around the inverter's apparent-power circle, in every scenario s",
    )


def _bus_dict(feeder, frame: pd.DataFrame | None, periods: list) -> dict:
    """Baseline values keyed (bus, phase, period): rows (bus, phase) keep their phase
    ("a", "b", "c"), rows by bus are "abc"; the root's rows are left out (the slack)."""
    if frame is None:
        return {}
    if "phase" in (frame.index.names or ()):
        bus = frame.index.get_level_values(0).map(feeder.merged)
        phase = frame.index.get_level_values("phase").astype(str)
    else:
        bus, phase = frame.index.map(feeder.merged), pd.Index(["abc"] * len(frame))
    if bus.isna().any():
        raise InputError(
            f"baseline: bus {frame.index[bus.isna()][0]!r} is not a bus of feeder {feeder.name}"
        )
    grouped = frame.groupby([bus, phase]).sum()
    return {
        (b, ph, t): float(grouped.at[(b, ph), t])
        for b, ph in grouped.index
        for t in periods
        if t in grouped.columns and b != feeder.root
    }


def _add_network(m, feeder, baseline_p, baseline_q, formulation) -> None:
    """One grid per scenario: ``m.scenario[s].network`` and ``m.scenario[s].handles``.

    Each scenario's injection table (``attach_grid``) holds the baseline (owner
    "baseline"), every offer's change in that scenario (owner "offers.<seller>", P
    and, for reactive offers, Q) and the upstream exchange at the root.
    """
    from gridmarkets.networks import attach_grid

    if baseline_p is None:
        raise InputError("baseline_p_kw: required with a network (the schedule the offers move)")
    periods = list(m.PERIODS)
    m.baseline_p, m.baseline_q = (
        _bus_dict(feeder, baseline_p, periods),
        _bus_dict(feeder, baseline_q, periods),
    )
    m.p_root_kw = pyo.Var(m.SCENARIOS, m.PERIODS, doc="exchange with the upstream grid (kW)")
    m.scenario = pyo.Block(m.SCENARIOS, doc="one grid per scenario (dispatch, TSO activations)")
    for s in m.SCENARIOS:
        attach_grid(
            m.scenario[s],
            feeder,
            periods,
            _scenario_injections(m, feeder, s),
            formulation=formulation,
            period_hours=m.period_hours,
        )


def _scenario_injections(m, feeder, scenario: str) -> pd.DataFrame:
    """The long injection table of one scenario (kW, kvar; positive into the grid)."""
    keys = set(m.baseline_p) | set(m.baseline_q)
    rows = [
        ("baseline", k[0], k[2], m.baseline_p.get(k, 0.0), m.baseline_q.get(k, 0.0), k[1])
        for k in sorted(keys)
    ]
    rows += [("upstream", feeder.root, t, m.p_root_kw[scenario, t], 0.0, "abc") for t in m.PERIODS]
    offers = m.offers.assign(phase=m.offers.get("phase", "abc"))
    for key, group in offers.groupby(["seller", "bus", "period", "phase"]).groups.items():
        seller, bus, t, phase = key
        rows.append(
            (
                f"offers.{seller}",
                bus,
                t,
                _seller_delta(m, group, scenario, False),
                _seller_delta(m, group, scenario, True),
                phase,
            )
        )
    return pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "q_kvar", "phase"])


def _add_needs(m, needs: pd.DataFrame) -> None:
    needs = needs[needs["period"].isin(list(m.PERIODS))] if len(needs) else needs
    m.needs = needs.reset_index(drop=True)
    thermal = m.needs.index[m.needs["limit_kind"].eq("thermal")] if len(needs) else []
    voltage = m.needs.index[m.needs["limit_kind"].ne("thermal")] if len(needs) else []
    m.THERMAL_NEEDS = pyo.Set(initialize=list(thermal), doc="branch needs (rows of needs)")
    m.VOLTAGE_NEEDS = pyo.Set(initialize=list(voltage), doc="bus needs (rows of needs)")
    first = m.scenario["dispatch"].handles
    if first.formulation == "lindist3flow" and len(m.needs):
        raise InputError(
            "needs: on a three-phase feeder the DSO's needs are LinDist3Flow's own per-phase "
            "voltage and thermal limits; a needs table bounds balanced flows (pass none)"
        )
    if first.polygon is None or first.formulation == "lindist3flow":  # no balanced flows
        if len(m.needs):
            raise InputError(
                f"needs: the DSO's needs bound branch flows and voltages, which formulation "
                f"{first.formulation!r} does not model"
            )
        m.NEED_DIRECTIONS = pyo.Set(initialize=[], doc="no thermal polygon")
        return
    m.NEED_DIRECTIONS = pyo.Set(
        initialize=range(len(first.polygon)), doc="directions of the thermal polygon's sides"
    )
    cos, sin = first.polygon[:, 0], first.polygon[:, 1]
    sides = first.polygon_sides
    rating = m.feeder.branches["rating_kva"] / m.feeder.s_base_kva * math.cos(math.pi / sides)

    def thermal_rule(m, n, k, s):
        row = m.needs.loc[n]
        h = m.scenario[s].handles
        line, t = int(row["index"]), int(row["period"])
        flow = cos[k] * h.p_flow[line, t] + sin[k] * h.q_flow[line, t]
        cap = rating[line] * row["target_linear"] / 100.0
        return (-cap, flow, cap)

    def voltage_rule(m, n, s):
        row = m.needs.loc[n]
        v = m.scenario[s].handles.voltage_sq[int(row["index"]), int(row["period"])]
        bound = row["target_linear"] ** 2
        return v <= bound if row["limit_kind"] == "voltage_upper" else v >= bound

    m.need_thermal = pyo.Constraint(
        m.THERMAL_NEEDS,
        m.NEED_DIRECTIONS,
        m.SCENARIOS,
        rule=thermal_rule,
        doc="|cos_k P[l,t] + sin_k Q[l,t]| <= S_l cos(pi/N) target_linear[n]/100  (pu): the "
        "DSO's need n, tightened by the baseline's linearisation error",
    )
    m.need_voltage = pyo.Constraint(
        m.VOLTAGE_NEEDS,
        m.SCENARIOS,
        rule=voltage_rule,
        doc="v[j,t] <= target_linear[n]^2 (upper) or >= target_linear[n]^2 (lower)  (pu^2)",
    )


def _bid_price(table: pd.DataFrame) -> pd.Series:
    """Price per MW and hour an offer costs the clearing: capacity (+ activation for the DSO)."""
    dso = table["product"].isin(DSO_PRODUCTS)
    return table["capacity_price"] + np.where(dso, table["activation_price"], 0.0)


def _add_cost(m, shortfall_price: float) -> None:
    per_kw = m.period_hours / 1000.0
    price = _bid_price(m.offers).to_dict()
    cost = sum(per_kw * price[o] * m.accepted_kw[o] for o in m.OFFERS)
    cost += sum(per_kw * shortfall_price * m.shortfall_kw[r] for r in m.REQUIREMENTS)
    m.procurement_cost = pyo.Objective(
        expr=cost,
        sense=pyo.minimize,
        doc="sum_o dt/1000 (capacity_price + activation_price [DSO]) x[o] + dt/1000 "
        "shortfall_price sum shortfall  (currency)",
    )


# --- results -------------------------------------------------------------------------


def results(
    m: pyo.ConcreteModel,
    solution: Solution,
    pricing: Literal["pay_as_bid", "uniform"] = "pay_as_bid",
    *,
    ac: bool = True,
) -> Result:
    """Tidy tables and KPIs of a solved clearing.

    Tables
    ------
    accepted : every offer (its ``quantity_kw`` named ``offered_kw``) with accepted_kw,
        above_cap, buyer ("dso" or "tso"), bid_price, zone (:func:`zones`), price
        (settlement, currency per MW and hour) and payment (currency, paid by the
        buyer to the seller).
    prices : product, direction, period, zone, price (the highest accepted
        bid_price: the uniform price, per zone where binding limits separate them).
    requirements : product, period, requirement_kw, procured_kw, shortfall_kw and
        marginal_price (the requirement's dual, currency per MW and hour).
    sellers : seller, accepted_kw, revenue, cost (at their bids), profit.
    needs : the DSO's needs with ``binding`` (a positive dual on its constraint).
    injections : bus, period, scenario, p_kw, q_kvar (baseline plus activation); on a
        three-phase feeder per bus and phase (column ``phase``).
    feeder_prices : with a network, each scenario's nodal prices (:func:`_feeder_prices`).

    With a network and ``ac``, ``result.ac_check`` holds pandapower's AC check of the
    baseline (``before``) and of every scenario (``dispatch`` = after the DSO's
    activation, ``tso_up``, ``tso_down``).
    """
    if pricing not in ("pay_as_bid", "uniform"):
        raise InputError(f"pricing: {pricing!r} is not 'pay_as_bid' or 'uniform'")
    accepted = _accepted_table(m).assign(zone=zones(m, solution))
    prices = _prices_table(accepted)
    accepted = _settle(m, accepted, prices, pricing)
    tables = {
        "accepted": accepted,
        "prices": prices,
        "requirements": _requirements_table(m, solution, accepted),
        "sellers": _sellers_table(accepted),
    }
    if m.feeder is not None:
        tables["needs"] = _needs_table(m, solution)
        tables["injections"] = _injections_table(m)
        if solution.duals_from is not None:
            tables["feeder_prices"] = _feeder_prices(m, solution)
    kpis = _kpis(m, solution, accepted, tables["requirements"])
    result = Result("flexibility", tables, kpis, solution)
    if m.feeder is not None and ac:
        result.ac_check = _ac_checks(m, tables["injections"], kpis)
    return result


def _accepted_table(m) -> pd.DataFrame:
    table = m.offers.rename(columns={"quantity_kw": "offered_kw"})
    x = np.array([pyo.value(m.accepted_kw[o]) for o in table.index], dtype=float)
    table["accepted_kw"] = np.where(np.abs(x) < _TOL, 0.0, x)
    table["buyer"] = np.where(table["product"].isin(DSO_PRODUCTS), "dso", "tso")
    table["bid_price"] = _bid_price(table)
    return table


PRICE_KEYS = ["product", "direction", "period", "zone"]


def zones(m, solution: Solution) -> pd.DataFrame:
    """The zone of every offer: the binding thermal limits between its bus and the root.

    A branch binds in a period when its LinDistFlow thermal limit or a DSO need on it
    has a non-zero dual in any scenario; buses behind the same binding branches form
    a zone ("-": no binding branch on the way to the root, or no network).

    Returns
    -------
    Series of zone labels ("3" or "0,5": feeder branch indices) by offer.
    """
    if m.feeder is None:
        return pd.Series("-", index=m.offers.index, name="zone")
    binding: dict[int, set] = {t: set() for t in m.PERIODS}
    for s in m.SCENARIOS:
        if m.scenario[s].handles.thermal_limit is None:
            continue
        duals = solution.dual(m.scenario[s].handles.thermal_limit)
        for key in duals.index[duals.abs() > 1e-9]:  # (line, [phase,] side, period)
            binding[key[-1]].add(key[0])
    if len(m.THERMAL_NEEDS):
        duals = solution.dual(m.need_thermal)
        for n in {k[0] for k in duals.index[duals.abs() > 1e-9]}:
            binding[int(m.needs.at[n, "period"])].add(int(m.needs.at[n, "index"]))
    labels = []
    for bus, t in zip(m.offers["bus"], m.offers["period"], strict=True):
        path = set(m.feeder.path_to_root(m.feeder.merged.get(bus, bus)))
        labels.append(",".join(str(k) for k in sorted(path & binding[t])) or "-")
    return pd.Series(labels, index=m.offers.index, name="zone")


def _prices_table(accepted: pd.DataFrame) -> pd.DataFrame:
    """Highest accepted bid per product, direction, period and zone (currency/MWh)."""
    taken = accepted[accepted["accepted_kw"] > _TOL]
    prices = taken.groupby(PRICE_KEYS)["bid_price"].max().rename("price").reset_index()
    return prices.sort_values(PRICE_KEYS).reset_index(drop=True)


def _requirements_table(m, solution: Solution, accepted: pd.DataFrame) -> pd.DataFrame:
    """Each TSO requirement with what was procured, the shortfall and its dual."""
    req = m.requirements.copy()
    procured = accepted.groupby(["product", "period"])["accepted_kw"].sum()
    index = list(zip(req["product"], req["period"], strict=True))
    req["procured_kw"] = procured.reindex(index).fillna(0.0).to_numpy() if index else []
    req["shortfall_kw"] = [pyo.value(m.shortfall_kw[k]) for k in index]
    duals = [solution.dual(m.tso_requirement[k]) for k in index]
    req["marginal_price"] = np.asarray(duals, dtype=float) * 1000.0 / m.period_hours
    return req


def _settle(m, accepted: pd.DataFrame, prices: pd.DataFrame, pricing: str) -> pd.DataFrame:
    settled = accepted.merge(prices, on=PRICE_KEYS, how="left")
    if pricing == "pay_as_bid":
        settled["price"] = settled["bid_price"]
    settled["price"] = settled["price"].where(settled["accepted_kw"] > 0, 0.0)
    settled["payment"] = settled["price"] * settled["accepted_kw"] * m.period_hours / 1000.0
    settled["cost"] = settled["bid_price"] * settled["accepted_kw"] * m.period_hours / 1000.0
    return settled


def _sellers_table(settled: pd.DataFrame) -> pd.DataFrame:
    table = settled.groupby("seller", sort=False)[["accepted_kw", "payment", "cost"]].sum()
    table = table.rename(columns={"payment": "revenue"})
    table["profit"] = table["revenue"] - table["cost"]
    return table.reset_index()


def _needs_table(m, solution: Solution) -> pd.DataFrame:
    needs = m.needs.copy()
    if needs.empty:
        return needs.assign(binding=pd.Series(dtype=bool))
    binding = []
    for n, row in needs.iterrows():
        if row["limit_kind"] == "thermal":
            cons = [m.need_thermal[n, k, s] for k in m.NEED_DIRECTIONS for s in m.SCENARIOS]
        else:
            cons = [m.need_voltage[n, s] for s in m.SCENARIOS]
        binding.append(any(abs(solution.dual(c)) > 1e-9 for c in cons))
    return needs.assign(binding=binding)


def _feeder_prices(m, solution: Solution) -> pd.DataFrame:
    """Every scenario's nodal prices (:func:`~gridmarkets.networks.nodal_prices`, per
    phase on three phases) with a column ``scenario``: the procurement's cost of one
    more kW of demand at a bus (phase) in that scenario (currency/MWh); baseline demand
    is in every scenario, so its marginal cost is their sum."""
    from gridmarkets.networks import nodal_prices

    frames = [nodal_prices(m.scenario[s].handles, solution).assign(scenario=s) for s in m.SCENARIOS]
    return pd.concat(frames, ignore_index=True)


def _three_phase(m) -> bool:
    return m.feeder is not None and m.scenario["dispatch"].handles.formulation == "lindist3flow"


def _injections_table(m) -> pd.DataFrame:
    """bus, period, scenario, p_kw, q_kvar; on three phases one row per bus and phase
    (column ``phase``)."""
    rows = []
    for s in m.SCENARIOS:
        h = m.scenario[s].handles
        if _three_phase(m):
            p, q = h.phase_injection_values()  # buses x phases x periods
        else:
            p, q = (a[:, None, :] for a in h.injection_values())
        for i, bus in enumerate(m.feeder.buses.index):
            for j in range(p.shape[1]):
                rows += [(bus, j, t, s, p[i, j, k], q[i, j, k]) for k, t in enumerate(h.periods)]
    table = pd.DataFrame(rows, columns=["bus", "phase", "period", "scenario", "p_kw", "q_kvar"])
    if not _three_phase(m):
        return table.drop(columns="phase")
    from gridmarkets.networks.three_phase import PHASES

    return table.assign(phase=table["phase"].map(dict(enumerate(PHASES))))


def _ac_checks(m, injections: pd.DataFrame, kpis: dict) -> dict[str, Any]:
    """pandapower's AC check of the baseline and of every scenario (``runpp_3ph`` of
    each phase's injections on a three-phase feeder)."""
    checks = {"before": _ac_check(m, m.baseline_p, m.baseline_q)}
    for s, group in injections.groupby("scenario", sort=False):
        phase = group["phase"] if "phase" in group else ["abc"] * len(group)
        keys = list(zip(group["bus"], phase, group["period"], strict=True))
        p, q = (dict(zip(keys, group[c], strict=True)) for c in ("p_kw", "q_kvar"))
        checks[s] = _ac_check(m, p, q)
    for name, check in checks.items():
        kpis[f"violations_{name}"] = len(check.violations())
    m.ac_checks = checks
    return {name: check.summary() for name, check in checks.items()}


def _ac_check(m, p_kw: dict, q_kvar: dict):
    """The AC check of injections keyed (bus, phase, period) (kW, kvar)."""
    periods = list(m.PERIODS)
    if _three_phase(m):
        from gridmarkets.networks import ac_check_3ph

        return ac_check_3ph(m.feeder, p_kw, q_kvar, periods)
    from gridmarkets.networks import ac_check

    frames = (_frame(values, m.feeder, periods) for values in (p_kw, q_kvar))
    return ac_check(m.feeder, *frames)


def _frame(values: dict, feeder, periods: list) -> pd.DataFrame:
    frame = pd.DataFrame(0.0, index=feeder.buses.index, columns=periods)
    for (bus, _, t), v in values.items():
        frame.at[bus, t] += v
    return frame


def _kpis(m, solution: Solution, settled: pd.DataFrame, requirements: pd.DataFrame) -> dict:
    by_buyer = settled.groupby("buyer")["payment"].sum()
    shortfall = float(requirements["shortfall_kw"].sum())
    return {
        "procurement_cost": solution.objective,
        "dso_cost": float(by_buyer.get("dso", 0.0)),
        "tso_cost": float(by_buyer.get("tso", 0.0)),
        "sellers_revenue": float(settled["payment"].sum()),
        "sellers_profit": float((settled["payment"] - settled["cost"]).sum()),
        "accepted_offers": int((settled["accepted_kw"] > 0).sum()),
        "shortfall_kw": shortfall,
    }


def clear(
    offers: pd.DataFrame,
    *,
    pricing: Literal["pay_as_bid", "uniform"] = "pay_as_bid",
    solve_options: Mapping[str, Any] | None = None,
    ac: bool = True,
    **build_options: Any,
) -> Result:
    """Build, solve and report a pool clearing in one call (see :func:`build`)."""
    m = build(offers, **build_options)
    return results(m, solve(m, **dict(solve_options or {})), pricing, ac=ac)


# --- bilateral mode ------------------------------------------------------------------


def baseline_flows(
    feeder, needs: pd.DataFrame, baseline_p_kw: pd.DataFrame, baseline_q_kvar=None
) -> pd.DataFrame:
    """The needs with their branch's baseline flow (lossless LinDistFlow, sending end).

    Returns
    -------
    ``needs`` with columns p_flow_kw and q_flow_kvar (NaN for voltage needs), what
    :func:`sensitivities` and :func:`bilateral` linearise a branch's loading around.
    """
    from gridmarkets.networks import linear_power_flow

    q = _q_or_zero(baseline_q_kvar, baseline_p_kw)
    _, branches = linear_power_flow(feeder, baseline_p_kw, q)
    flows = branches.reset_index().set_index(["branch", "period"])[["p_kw", "q_kvar"]]
    thermal = needs["limit_kind"].eq("thermal")
    keys = pd.MultiIndex.from_arrays(
        [needs["index"].astype(int), needs["period"].astype(int)], names=["branch", "period"]
    )
    values = flows.reindex(keys).to_numpy().reshape(len(needs), 2)
    values[~thermal.to_numpy()] = np.nan
    return needs.assign(p_flow_kw=values[:, 0], q_flow_kvar=values[:, 1])


def flow_changes(feeder, needs: pd.DataFrame, offers: pd.DataFrame) -> pd.DataFrame:
    """What one accepted kW (kvar) of each DSO offer does to each need's element.

    Lossless LinDistFlow: an injection at bus b changes the flow into every branch on
    b's path to the root by minus the injection; the squared voltage at bus i by
    2 (R_common dp + X_common dq) / S_base, so the voltage by about that over 2. An
    active-power offer with kvar per kW r (:func:`q_per_kw`) moves dq = r dp with its dp.

    Returns
    -------
    DataFrame with columns need (row of ``needs``), offer (row of ``offers``), dp_kw and
    dq_kvar (change of the branch's flow per kW or kvar accepted; thermal needs) and
    dv_pu (change of the bus voltage, pu per kW or kvar; voltage needs); only pairs in
    the same period where the offer moves the element.
    """
    paths = {b: set(feeder.path_to_root(b)) for b in feeder.buses.index}
    dso = offers[offers["product"].isin(DSO_PRODUCTS)]
    dso = dso.assign(q_per_kw=q_per_kw(dso))
    rows = []
    for n, need in needs.iterrows():
        element = int(need["index"])
        for o, offer in dso[dso["period"] == need["period"]].iterrows():
            bus = feeder.merged.get(offer["bus"], offer["bus"])
            injected = 1.0 if offer["direction"] == "up" else -1.0
            active = offer["product"] == DSO_PRODUCT
            dp, dq = (1.0, offer["q_per_kw"]) if active else (0.0, 1.0)
            if need["limit_kind"] == "thermal":
                if element in paths[bus]:
                    rows.append((n, o, -injected * dp, -injected * dq, 0.0))
                continue
            common = list(paths[bus] & paths[element])
            if common:
                r, x = feeder.branches.loc[common, ["r_pu", "x_pu"]].sum()
                dv = injected * (r * dp + x * dq) / feeder.s_base_kva
                rows.append((n, o, 0.0, 0.0, dv))
    return pd.DataFrame(rows, columns=["need", "offer", "dp_kw", "dq_kvar", "dv_pu"])


def sensitivities(feeder, needs: pd.DataFrame, offers: pd.DataFrame) -> pd.DataFrame:
    """Relief of each DSO offer on each need, per kW (kvar) accepted, lossless LinDistFlow.

    Thermal need on branch l with baseline flow (P0, Q0) (:func:`baseline_flows`): the
    fall of its loading 100 |S| / rating, linearised in P and Q at the baseline,
    ``-100 (P0 dP + Q0 dQ) / (|S0| rating)`` (% per kW or kvar), so reactive offers
    count where the branch carries reactive power. Voltage need at bus i: the voltage
    change towards the band (pu per kW or kvar).

    Returns
    -------
    DataFrame with columns need, offer and sensitivity (relief per kW or kvar; negative
    where the offer pushes the element further beyond its limit).
    """
    missing = [c for c in ("p_flow_kw", "q_flow_kvar") if c not in needs]
    if needs["limit_kind"].eq("thermal").any() and missing:
        raise InputError(f"needs: {', '.join(missing)} missing (see baseline_flows)")
    changes = flow_changes(feeder, needs, offers)
    need = needs.loc[changes["need"]].reset_index(drop=True)
    upper = need["limit_kind"].eq("voltage_upper").to_numpy()
    relief = np.where(upper, -1.0, 1.0) * changes["dv_pu"].to_numpy()
    thermal = need["limit_kind"].eq("thermal").to_numpy()
    if thermal.any():
        p0, q0 = (need.loc[thermal, c].to_numpy(float) for c in ("p_flow_kw", "q_flow_kvar"))
        dp, dq = (changes.loc[thermal, c].to_numpy() for c in ("dp_kw", "dq_kvar"))
        lines = need.loc[thermal, "index"].astype(int)
        rating = feeder.branches.loc[lines, "rating_kva"].to_numpy()
        relief[thermal] = -100.0 * (p0 * dp + q0 * dq) / (np.hypot(p0, q0) * rating)
    table = changes[["need", "offer"]].assign(sensitivity=relief)
    return table[table["sensitivity"] != 0].reset_index(drop=True)


def bilateral(
    feeder,
    offers: pd.DataFrame,
    needs: pd.DataFrame,
    baseline_p_kw: pd.DataFrame,
    baseline_q_kvar: pd.DataFrame | None = None,
    *,
    products: pd.DataFrame | None = None,
    min_sensitivity: float = 0.0,
    polygon_sides: int = 12,
    period_hours: float = 1.0,
    solve_options: Mapping[str, Any] | None = None,
    ac: bool = True,
) -> Result:
    """The DSO buys directly from the buses that relieve its needs, pay-as-bid.

    Each need (from :func:`dso_needs`) asks for its linear value back to its target;
    the DSO asks the offers whose relief on some need (:func:`sensitivities`) is
    positive and at least ``min_sensitivity``, accepts the cheapest set that meets
    every need (a small LP, no TSO, no full network model) and pays each its bid.
    Every asked offer's effect on every need counts, helpful or not (a reactive offer
    bought against an overvoltage loads the transformer above it):

    - voltage need: ``sum_o sensitivity[n,o] x[o] >= |value_linear - target_linear|``;
    - thermal need on branch l: its flow after the purchase, ``P = P0 + sum_o dP[o]
      x[o]`` and ``Q = Q0 + sum_o dQ[o] x[o]`` (:func:`flow_changes`), stays inside a
      ``polygon_sides``-gon inscribed in the circle ``|S| = rating target_linear / 100``
      with a vertex on the baseline flow's direction (exact when the flow only shrinks).

    Branches and buses without a need are not modelled: the pool (:func:`clear`) is
    the mode that keeps every limit. The sensitivities are balanced (single-phase): an
    offer on fewer than three phases (``phase``) is refused; the pool clears those.

    Parameters
    ----------
    feeder : the :class:`~gridmarkets.networks.Feeder`.
    offers : table of :data:`OFFER_COLUMNS`; only the DSO's products are asked.
    needs : :func:`dso_needs`' table.
    baseline_p_kw, baseline_q_kvar : the baseline injections (buses x periods).
    products : the TSO products (None: the shipped ones), to check the offers.
    min_sensitivity : the least relief per kW (kvar) for an offer to be asked.
    polygon_sides : sides N of the thermal needs' polygon (even, at least 4).
    period_hours : length of a period (h).
    solve_options : passed to :func:`~gridmarkets.solvers.solve`.
    ac : run pandapower's AC check before and after the purchase.

    Returns
    -------
    Result ("flexibility") with the tables of :func:`results` (accepted, prices,
    sellers, needs with their baseline flows, injections) and, with ``ac``, the AC
    checks ``before`` and ``dispatch`` (after activation).
    """
    if polygon_sides < 4 or polygon_sides % 2:
        raise InputError(f"polygon_sides: {polygon_sides} must be an even number of at least 4")
    from gridmarkets.networks.coupling import placed

    products = load_products() if products is None else products
    table = prepare_offers(offers, products)
    if "phase" in table:
        _reject(table, table["phase"].ne("abc"), "phase", "is not 'abc': bilateral is balanced")
    owners = table.assign(owner="offers." + table["seller"].astype(str))
    placed(owners, feeder, sorted(set(table["period"])))  # every bus on the feeder
    needs = baseline_flows(feeder, needs.reset_index(drop=True), baseline_p_kw, baseline_q_kvar)
    sens = sensitivities(feeder, needs, table)
    helpful = sens[(sens["sensitivity"] > 0) & (sens["sensitivity"] >= min_sensitivity)]
    chosen = sorted(set(helpful["offer"]))
    _check_covered(needs, set(helpful["need"]))
    m = build(table.loc[chosen], products=products, period_hours=period_hours)
    changes = flow_changes(feeder, needs, table.loc[chosen])
    sens = sens[sens["offer"].isin(chosen)]
    _add_voltage_relief(m, needs, sens, {o: k for k, o in enumerate(chosen)})
    _add_thermal_relief(m, feeder, needs, changes, chosen, polygon_sides)
    result = results(m, solve(m, **dict(solve_options or {})), "pay_as_bid")
    result.tables["needs"] = needs
    if ac:
        _bilateral_ac_check(result, feeder, baseline_p_kw, baseline_q_kvar)
    return result


def _relief(needs: pd.DataFrame) -> pd.Series:
    """How far each need's linear value must move: |value_linear - target_linear|, >= 0."""
    sign = np.where(needs["limit_kind"].eq("voltage_lower"), -1.0, 1.0)
    return (sign * (needs["value_linear"] - needs["target_linear"])).clip(lower=0.0)


def _check_covered(needs: pd.DataFrame, covered: set) -> None:
    """A need that must move and that no offer relieves is an error naming it."""
    left = needs[(_relief(needs) > _TOL) & ~needs.index.isin(list(covered))]
    if not left.empty:
        row = left.iloc[0]
        raise InfeasibleError(
            f"needs: no DSO offer relieves the {row['limit_kind']} need at "
            f"{row['element']} {row['index']} in period {row['period']} "
            f"({len(left)} such need(s))"
        )


def _add_voltage_relief(m, needs: pd.DataFrame, sens: pd.DataFrame, position: dict) -> None:
    voltage = needs.index[needs["limit_kind"].ne("thermal")]
    relief = _relief(needs)
    by_need = sens.groupby("need")
    m.VOLTAGE_NEEDS = pyo.Set(initialize=list(voltage), doc="voltage needs (rows of needs)")

    def rule(m, n):
        if n not in by_need.groups:
            return pyo.Constraint.Skip  # nothing to move (_check_covered)
        group = by_need.get_group(n)
        terms = zip(group["offer"].map(position), group["sensitivity"], strict=True)
        return sum(v * m.accepted_kw[o] for o, v in terms) >= relief[n]

    m.voltage_relief = pyo.Constraint(
        m.VOLTAGE_NEEDS,
        rule=rule,
        doc="sum_o sensitivity[n,o] x[o] >= |value_linear - target_linear|[n]  (pu)",
    )


def _add_thermal_relief(m, feeder, needs, changes, chosen: list, sides: int) -> None:
    from gridmarkets.networks.lindistflow import polygon_directions

    thermal = needs.index[needs["limit_kind"].eq("thermal")]
    position = {o: k for k, o in enumerate(chosen)}
    by_need = changes.groupby("need")
    m.THERMAL_NEEDS = pyo.Set(initialize=list(thermal), doc="thermal needs (rows of needs)")
    m.NEED_DIRECTIONS = pyo.Set(initialize=range(sides // 2), doc="pairs of polygon sides")
    normals = polygon_directions(sides)

    def rule(m, n, k):
        row = needs.loc[n]
        turn = math.atan2(row["q_flow_kvar"], row["p_flow_kw"]) + math.pi / sides
        cos, sin = (
            normals[k, 0] * math.cos(turn) - normals[k, 1] * math.sin(turn),
            normals[k, 1] * math.cos(turn) + normals[k, 0] * math.sin(turn),
        )
        group = by_need.get_group(n) if n in by_need.groups else changes.iloc[:0]
        flow = cos * row["p_flow_kw"] + sin * row["q_flow_kvar"]
        flow += sum(
            (cos * dp + sin * dq) * m.accepted_kw[position[o]]
            for o, dp, dq in zip(group["offer"], group["dp_kw"], group["dq_kvar"], strict=True)
        )
        rating = feeder.branches.at[int(row["index"]), "rating_kva"]
        cap = rating * row["target_linear"] / 100.0 * math.cos(math.pi / sides)
        if isinstance(flow, float):
            return pyo.Constraint.Skip  # no offer moves it (_check_covered)
        return (-cap, flow, cap)

    m.thermal_relief = pyo.Constraint(
        m.THERMAL_NEEDS,
        m.NEED_DIRECTIONS,
        rule=rule,
        doc="|cos a_k P + sin a_k Q| <= rating target_linear/100 cos(pi/N), P = P0 + "
        "sum_o dP[o] x[o], Q = Q0 + sum_o dQ[o] x[o], a_k = atan2(Q0, P0) + (2k + 1) pi/N  "
        "(kW, kvar): the N-gon in the circle of the target loading, a vertex on the "
        "baseline flow",
    )


def _bilateral_ac_check(result: Result, feeder, baseline_p, baseline_q) -> None:
    from gridmarkets.networks import ac_check

    p, q = _activated(feeder, result.accepted, baseline_p, baseline_q)
    checks = {
        "before": ac_check(feeder, baseline_p, _q_or_zero(baseline_q, baseline_p)),
        "dispatch": ac_check(feeder, p, q),
    }
    result.ac_check = {name: c.summary() for name, c in checks.items()}
    for name, c in checks.items():
        result.kpis[f"violations_{name}"] = len(c.violations())


def _q_or_zero(q, p):
    return q if q is not None else 0.0 * p


def _activated(feeder, accepted: pd.DataFrame, baseline_p, baseline_q):
    """Baseline injections plus the DSO's accepted offers (kW and kvar frames); an
    active-power offer adds its kvar per kW (:func:`q_per_kw`) times its kW to Q."""
    p = baseline_p.copy().astype(float)
    q = _q_or_zero(baseline_q, baseline_p).copy().astype(float)
    moved = accepted[accepted["accepted_kw"] > 0]
    for (_, row), ratio in zip(moved.iterrows(), moved["q_per_kw"], strict=True):
        sign = 1.0 if row["direction"] == "up" else -1.0
        reactive = row["product"] == REACTIVE_PRODUCT
        changes = ((q, 1.0),) if reactive else ((p, 1.0), (q, ratio))
        bus, t = row["bus"], row["period"]
        for target, per_kw in changes:
            if per_kw == 0:
                continue
            if bus not in target.index:
                target.loc[bus] = 0.0
            target.at[bus, t] += sign * per_kw * row["accepted_kw"]
    return p, q


def compare(pool: Result, bilateral_result: Result) -> pd.DataFrame:
    """The DSO's cost, accepted flexibility and AC violations in the two modes."""
    rows = []
    for name, result in (("pool", pool), ("bilateral", bilateral_result)):
        acc = result.accepted
        dso = acc[acc["buyer"] == "dso"]
        rows.append(
            {
                "mode": name,
                "dso_cost": result.kpis["dso_cost"],
                "dso_accepted_kw": float(dso["accepted_kw"].sum()),
                "violations_before": result.kpis.get("violations_before"),
                "violations_after": result.kpis.get("violations_dispatch"),
            }
        )
    return pd.DataFrame(rows)
