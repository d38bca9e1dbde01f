"""The LEM with participants that have their own model (issue 17): storage, flexible
loads, quadratic curves and device bids, each against a reference built in the test.

References: each participant's best response at the cleared prices solved here with
scipy's ``linprog`` from its spec (storage, flexible load) or in closed form (curves),
never through gridmarkets' own participant blocks; the energy budget's value by a
greedy merit order and by a finite difference of re-cleared markets; deliverability by
the home's own EMS (models/prosumer.py) pinned to what the market accepted.
"""

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from scipy.optimize import linprog

from gridmarkets.errors import InputError
from gridmarkets.models import lem, prosumer
from gridmarkets.models import participants as parts
from gridmarkets.models.assets import BatterySpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

TOL = 1e-6


# ---------------------------------------------------------------- references by hand


def storage_best_profit(spec: parts.StorageBid, price: np.ndarray, hours: float) -> float:
    """max sum_t (price[t] - k) d[t] dt/1000 - (price[t] + k) c[t] dt/1000 over charge c,
    discharge d and SoC s: s[t] = s[t-1] + dt (eta_c c[t] - d[t] / eta_d), bounds, s[T] >=
    final; by linprog on x = (c, d, s)."""
    n, k = len(price), spec.degradation_cost_per_mwh
    cost = np.concatenate([(price + k), -(price - k), np.zeros(n)]) * hours / 1000.0
    a_eq = np.zeros((n, 3 * n))
    b_eq = np.zeros(n)
    for t in range(n):
        a_eq[t, t] = -hours * spec.eta_charge
        a_eq[t, n + t] = hours / spec.eta_discharge
        a_eq[t, 2 * n + t] = 1.0
        if t:
            a_eq[t, 2 * n + t - 1] = -1.0
        else:
            b_eq[t] = spec.soc_initial_kwh
    final = spec.soc_initial_kwh if spec.soc_final_kwh is None else spec.soc_final_kwh
    a_ub = np.zeros((1, 3 * n))
    a_ub[0, 3 * n - 1] = -1.0
    top = spec.capacity_kwh if spec.soc_max_kwh is None else spec.soc_max_kwh
    discharge = spec.p_charge_max_kw if spec.p_discharge_max_kw is None else spec.p_discharge_max_kw
    bounds = [(0, spec.p_charge_max_kw)] * n + [(0, discharge)] * n + [(spec.soc_min_kwh, top)] * n
    found = linprog(cost, A_ub=a_ub, b_ub=[-final], A_eq=a_eq, b_eq=b_eq, bounds=bounds)
    assert found.status == 0
    return -found.fun


def load_best_profit(spec: parts.FlexibleLoad, price: np.ndarray, hours: float) -> float:
    """max sum_t (u[t] - price[t]) p[t] dt/1000 with 0 <= p <= p_max in the window and
    energy_min <= sum p dt <= energy_kwh; by linprog."""
    n = len(price)
    utility = np.broadcast_to(np.asarray(spec.utility_per_mwh, dtype=float), (n,))
    end = n if spec.end is None else spec.end
    inside = (np.arange(n) >= spec.start) & (np.arange(n) < end)
    cost = -(utility - price) * hours / 1000.0
    energy = np.full((1, n), hours)
    least = spec.energy_kwh if spec.energy_min_kwh is None else spec.energy_min_kwh
    found = linprog(
        cost,
        A_ub=np.vstack([energy, -energy]),
        b_ub=[spec.energy_kwh, -least],
        bounds=[(0, spec.p_max_kw if i else 0) for i in inside],
    )
    assert found.status == 0
    return -found.fun


def curve_best_profit(spec: parts.CurveBid, price: np.ndarray, hours: float) -> float:
    """Closed form per period: clip(s (price - b) / (2 a), p_min, p_max)."""
    s = 1.0 if spec.side == "sell" else -1.0
    p = np.clip(s * (price - spec.b) / (2 * spec.a), spec.p_min_kw, spec.p_max_kw)
    return float(((s * (price - spec.b) * p - spec.a * p**2) * hours / 1000).sum())


BEST = {
    "storage": storage_best_profit,
    "flexible_load": load_best_profit,
    "curve": curve_best_profit,
}


# ---------------------------------------------------------------- random markets


def random_market(seed: int, n: int):
    """Per period a cheap and a dear sell block and a buy block at random prices, two
    storages, two flexible loads (one with a minimum, one free), a quadratic buyer."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n):
        for k, (side, low, high) in enumerate(
            [("sell", 10, 60), ("sell", 60, 150), ("buy", 40, 200)]
        ):
            rows.append(
                {
                    "participant": f"{side}{k}",
                    "side": side,
                    "quantity_kw": float(rng.uniform(2, 12)),
                    "price": float(rng.uniform(low, high)),
                    "period": t,
                }
            )
    specs = [
        parts.StorageBid(
            participant="s1",
            capacity_kwh=float(rng.uniform(4, 12)),
            p_charge_max_kw=float(rng.uniform(1, 5)),
            eta_charge=0.95,
            eta_discharge=0.9,
            soc_initial_kwh=2.0,
            degradation_cost_per_mwh=float(rng.uniform(0, 20)),
        ),
        parts.StorageBid(
            participant="s2",
            capacity_kwh=6.0,
            p_charge_max_kw=3.0,
            p_discharge_max_kw=2.0,
            soc_initial_kwh=1.0,
            soc_final_kwh=3.0,
        ),
        parts.FlexibleLoad(
            participant="ev",
            energy_kwh=float(rng.uniform(4, 10)),
            energy_min_kwh=4.0,
            p_max_kw=3.0,
            start=1,
            end=n - 1,
            utility_per_mwh=rng.uniform(20, 180, n).tolist(),
        ),
        parts.FlexibleLoad(
            participant="wash",
            energy_kwh=3.0,
            energy_min_kwh=0.0,
            p_max_kw=2.0,
            utility_per_mwh=90.0,
        ),
        parts.CurveBid(participant="hp", side="buy", a=0.4, b=160.0, p_min_kw=0.5, p_max_kw=6.0),
    ]
    return pd.DataFrame(rows), specs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hours", [0.5, 1.0])
def test_every_participant_best_responds_at_the_cleared_prices(seed, hours):
    n = 8
    bids, specs = random_market(seed, n)
    upstream = lem.Upstream(import_price=220.0, export_price=5.0, capacity_kw=4.0)
    result = lem.clear(bids, participants=specs, upstream=upstream, period_hours=hours)
    price = result.prices.set_index("period")["price"].reindex(range(n)).to_numpy()
    responses = result.tables["best_responses"].set_index("participant")
    schedules = result.tables["schedules"]
    for spec in specs:
        best = BEST[spec.kind](spec, price, hours)  # by hand, alone at the prices
        cleared = responses.loc[spec.participant, "profit"]
        assert cleared == pytest.approx(best, abs=TOL), spec.participant
        assert responses.loc[spec.participant, "best_profit"] == pytest.approx(best, abs=TOL)
        own = schedules[schedules["participant"] == spec.participant]
        assert own["price"].to_numpy() == pytest.approx(price)
    # the profits the market reports follow from the schedules: a flexible load's by hand
    wash = schedules[schedules["participant"] == "wash"]["p_net_kw"].to_numpy()
    by_hand = ((90.0 - price) * -wash * hours / 1000).sum()
    assert responses.loc["wash", "profit"] == pytest.approx(by_hand, abs=1e-9)
    assert result.kpis["participants_best_response"] == 1.0
    assert result.kpis["participants_max_lost_opportunity"] <= TOL
    # nobody is worse off than its alternative: the storages and the free load can stay
    # out (their no-trade welfare is 0), the others have only their best response
    gain = result.settlement.set_index("participant")["gain"]
    for name in ("s1", "wash"):
        assert responses.loc[name, "no_trade"] == pytest.approx(0.0, abs=1e-9)
        assert gain[name] == pytest.approx(responses.loc[name, "profit"], abs=1e-9)
    assert np.isnan(responses.loc["s2", "no_trade"])  # it must end fuller than it starts
    assert np.isnan(responses.loc["ev", "no_trade"])  # it must get 4 kWh
    assert np.isnan(responses.loc["hp", "no_trade"])  # it must run at 0.5 kW at least
    assert result.kpis["individually_rational"] == 1.0
    # every period balances: blocks, participants and the upstream grid
    accepted = result.accepted.assign(
        p=lambda a: np.where(a["side"] == "sell", 1, -1) * a["accepted_kw"]
    )
    net = accepted.groupby("period")["p"].sum() + schedules.groupby("period")["p_net_kw"].sum()
    grid = result.upstream.set_index("period")
    assert (net + grid["import_kw"] - grid["export_kw"]).abs().max() <= 1e-6
    assert abs(result.kpis["reconciliation_error"]) <= 1e-9


def test_a_storage_charges_cheap_and_discharges_dear_to_its_capacity():
    """Designed: one seller at 20 then 200, one buyer of 5 kW at 150 in both periods; a
    lossless 4 kWh storage, empty, 4 kW: it charges 4 kWh in period 0 (the seller, with
    room, sets 20) and sells them in period 1, where the buyer is served 4 of its 5 kW
    and sets 150."""
    bids = pd.DataFrame(
        [
            {"participant": "g", "side": "sell", "quantity_kw": 10.0, "price": 20.0, "period": 0},
            {"participant": "g", "side": "sell", "quantity_kw": 10.0, "price": 200.0, "period": 1},
            {"participant": "d", "side": "buy", "quantity_kw": 5.0, "price": 150.0, "period": 0},
            {"participant": "d", "side": "buy", "quantity_kw": 5.0, "price": 150.0, "period": 1},
        ]
    )
    storage = parts.StorageBid(
        participant="s",
        capacity_kwh=4.0,
        p_charge_max_kw=4.0,
        eta_charge=1.0,
        eta_discharge=1.0,
        soc_final_kwh=0.0,
    )
    result = lem.clear(bids, participants=[storage])
    schedule = result.tables["schedules"].set_index("period")
    assert schedule["p_net_kw"].to_numpy() == pytest.approx([-4.0, 4.0], abs=TOL)
    assert schedule["soc_kwh"].to_numpy() == pytest.approx([4.0, 0.0], abs=TOL)
    assert result.prices["price"].to_numpy() == pytest.approx([20.0, 150.0], abs=TOL)


# ---------------------------------------------------------------- energy budgets, 48 periods


def budget_market(energy_kwh: float, supply_prices: np.ndarray, utility: float, p_max: float):
    bids = pd.DataFrame(
        {
            "participant": "supply",
            "side": "sell",
            "quantity_kw": 100.0,
            "price": supply_prices,
            "period": np.arange(len(supply_prices)),
        }
    )
    load = parts.FlexibleLoad(
        participant="load",
        energy_kwh=energy_kwh,
        energy_min_kwh=0.0,
        p_max_kw=p_max,
        utility_per_mwh=utility,
    )
    m = lem.build(bids, participants=[load], period_hours=0.5)
    return m, solve(m)


def greedy_welfare(energy_kwh, supply_prices, utility, p_max, hours):
    """Fill the cheapest periods below the utility, p_max each, until the budget: the
    welfare, the budget's value per MWh (utility less the marginal period's price) and
    whether it binds."""
    left, welfare = energy_kwh, 0.0
    for price in sorted(p for p in supply_prices if p < utility):
        take = min(p_max * hours, left)
        welfare += (utility - price) * take / 1000
        left -= take
        if left <= 0:
            return welfare, utility - price, True  # the budget binds
    return welfare, 0.0, False


@pytest.mark.parametrize("seed", range(3))
def test_a_48_period_energy_budget_binds_where_it_should_and_its_dual_is_its_value(seed):
    rng = np.random.default_rng(seed)
    prices = rng.uniform(20, 200, 48)
    utility, p_max, hours = 120.0, 3.0, 0.5
    room = p_max * hours * (prices < utility).sum()  # what the load would take unbounded
    for energy in (0.37 * room, 0.81 * room, 1.3 * room):
        m, solution = budget_market(energy, prices, utility, p_max)
        welfare, value_per_mwh, binds = greedy_welfare(energy, prices, utility, p_max, hours)
        assert solution.objective == pytest.approx(welfare, abs=1e-9)
        budget = m.participant["load"].energy_budget
        used = pyo.value(budget.body)
        assert binds == (energy < room)
        assert used == pytest.approx(energy if binds else room, abs=1e-6)
        # the dual is d cost / d energy_kwh (cost = -welfare), per kWh
        dual = -solution.dual(budget)
        assert dual * 1000 == pytest.approx(value_per_mwh, abs=1e-6)
        step = 1e-3
        _, more = budget_market(energy + step, prices, utility, p_max)
        assert (more.objective - solution.objective) / step == pytest.approx(dual, abs=1e-6)
        assert binds or dual == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- homes: deliverability


def battery_home() -> ProsumerSpec:
    """The issue's case: 2 kWh of room in a battery that charges at 2 kW, no load."""
    battery = BatterySpec(
        capacity_kwh=4.0, p_charge_max_kw=2.0, soc_initial_kwh=2.0, soc_final_kwh=2.0
    )
    return ProsumerSpec(battery=battery, load_kw=[0.5, 0.5, 0.5, 1.0, 1.0, 1.0])


def pinned_ems(home: ProsumerSpec, net_import_kw: np.ndarray, tariff: PricesSpec):
    """The home's own EMS with its net import fixed to what the market accepted; raises
    InfeasibleError when the home cannot deliver it."""

    def pin(m):
        b = m.home["home"]
        m.pinned = pyo.Constraint(
            m.PERIODS,
            rule=lambda m, t: b.p_import_kw[t] - b.p_export_kw[t] == float(net_import_kw[t]),
        )

    model = prosumer.build({"home": home}, tariff, periods=6, period_hours=1.0, extra=pin)
    return solve(model)


def cheap_sellers(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "participant": "pv_farm",
                "side": "sell",
                "quantity_kw": 50.0,
                "price": 10.0,
                "period": t,
            }
            for t in range(n)
        ]
    )


def test_bid_curves_of_a_battery_home_stay_deliverable():
    """Per-period curves of the battery alone would accept 2 kW of charging in all six
    periods (12 kWh into 2 kWh of room); the bids are deliverable now."""
    home = battery_home()
    tariff = PricesSpec(import_price=100.0, export_price=100.0)
    bids = prosumer.bid_curves(home, tariff, [40, 120, 260], participant="home", periods=6)
    result = lem.clear(pd.concat([bids, cheap_sellers()], ignore_index=True))
    mine = result.accepted[result.accepted["participant"] == "home"]
    sign = np.where(mine["side"] == "buy", 1.0, -1.0)
    net = (mine.assign(p=sign * mine["accepted_kw"]).groupby("period")["p"].sum()).reindex(
        range(6), fill_value=0.0
    )
    charged = (net.to_numpy() - np.array([0.5, 0.5, 0.5, 1.0, 1.0, 1.0])).clip(min=0).sum()
    assert charged * 0.95 <= 2.0 + 1e-6  # no more than the room, by hand
    assert pinned_ems(home, net.to_numpy(), tariff).optimal


def test_a_device_bid_is_scheduled_by_the_market_and_delivered_by_the_home():
    home = battery_home().model_copy(
        update={"battery": battery_home().battery.model_copy(update={"relaxed": True})}
    )
    bid = parts.DeviceBid(participant="home", home=home)
    buyer = pd.DataFrame(
        [
            {"participant": "shop", "side": "buy", "quantity_kw": 3.0, "price": 300.0, "period": t}
            for t in range(6)
        ]
    )
    dear = cheap_sellers().assign(price=[10.0, 10.0, 10.0, 250.0, 250.0, 250.0])
    result = lem.clear(pd.concat([dear, buyer], ignore_index=True), participants=[bid])
    schedule = result.tables["schedules"].set_index("period")["p_net_kw"]
    # it charges its 2 kWh of room while cheap and sells it back while dear
    stored = -(schedule.iloc[:3].sum() + 1.5)  # beyond its load in the cheap periods
    assert stored * 0.95 == pytest.approx(2.0, abs=1e-6)
    assert pinned_ems(home, -schedule.to_numpy(), PricesSpec(import_price=100.0)).optimal
    assert result.kpis["participants_best_response"] == 1.0


# ---------------------------------------------------------------- quadratic participants


@pytest.mark.parametrize("seed", range(4))
def test_curve_participants_clear_as_the_curves_table_and_the_hand_crossing(seed):
    from test_lem_curves import hand_clearing, hand_quantities, reported_price

    rng = np.random.default_rng(seed)
    rows = [
        {
            "participant": f"{side}{i}",
            "side": side,
            "a": float(rng.uniform(0.01, 2)),
            "b": float(rng.uniform(0, 80) if side == "sell" else rng.uniform(40, 200)),
            "p_min_kw": 0.0,
            "p_max_kw": float(rng.uniform(1, 100)),
        }
        for i, side in enumerate(["sell", "buy", "sell", "buy", "sell"])
    ]
    specs = [parts.CurveBid(**row) for row in rows]
    result = lem.clear(None, participants=specs, periods=[0])
    low, high = hand_clearing(rows, [])
    price = reported_price(low, high)
    assert result.prices.loc[0, "price"] == pytest.approx(price, rel=TOL, abs=TOL)
    q, _ = hand_quantities(rows, [], price)
    got = result.tables["schedules"].set_index("participant")["p_net_kw"]
    for row, expected in zip(rows, q, strict=True):
        sign = 1.0 if row["side"] == "sell" else -1.0
        assert got[row["participant"]] == pytest.approx(sign * expected, rel=TOL, abs=TOL)


# ---------------------------------------------------------------- errors


def test_bad_participants_name_the_entry_and_field():
    with pytest.raises(InputError, match=r"participants\[1\]\.flexible_load\.energy_kwh"):
        lem.build(
            None,
            participants=[
                {"kind": "storage", "participant": "s", "capacity_kwh": 4, "p_charge_max_kw": 2},
                {"kind": "flexible_load", "participant": "f", "energy_kwh": -1, "p_max_kw": 2},
            ],
            periods=[0, 1],
        )
    with pytest.raises(InputError, match=r"f\.energy_kwh: 20 kWh cannot be consumed"):
        lem.build(
            None,
            participants=[parts.FlexibleLoad(participant="f", energy_kwh=20, p_max_kw=2)],
            periods=[0, 1],
        )
    with pytest.raises(InputError, match=r"'s' appears more than once"):
        storage = parts.StorageBid(participant="s", capacity_kwh=4, p_charge_max_kw=2)
        lem.build(None, participants=[storage, storage], periods=[0])
    with pytest.raises(InputError, match=r"periods: give the market's periods"):
        lem.build(None, participants=[storage])
    with pytest.raises(InputError, match=r"s: a storage participant needs consecutive periods"):
        lem.build(None, participants=[storage], periods=[0, 2])


# ---------------------------------------------------------------- structure


def test_a_block_only_market_builds_as_before():
    """No participant blocks, no objective scaling, a LinearExpression welfare (the
    1,000 x 96 benchmark's path)."""
    from pyomo.core.expr.numeric_expr import LinearExpression

    from gridmarkets.solvers.highs import OBJECTIVE_SCALE_ATTR

    bids, _ = random_market(0, 4)
    m = lem.build(bids, upstream=lem.Upstream(200.0, 10.0))
    assert not hasattr(m, "PARTICIPANTS") and not hasattr(m, "participant_kw")
    assert not hasattr(m, OBJECTIVE_SCALE_ATTR)
    assert type(m.social_welfare.expr) is LinearExpression
    with_storage = lem.build(
        bids, participants=[random_market(0, 4)[1][0]], upstream=lem.Upstream(200.0, 10.0)
    )
    assert getattr(with_storage, OBJECTIVE_SCALE_ATTR) == 10  # per MWh: 2^10 ~ 1000 / 1 h


def test_on_a_feeder_each_participant_is_priced_at_its_bus():
    """A storage at the end of case33bw and a flexible load near the root, LinDistFlow
    with losses: each is settled and best-responds at its own bus's nodal price."""
    from gridmarkets.networks import LinDistFlow, load

    feeder = load("case33bw")
    bids = pd.DataFrame(
        [
            {
                "participant": "pv",
                "side": "sell",
                "quantity_kw": 300.0,
                "price": p,
                "period": t,
                "bus": 17,
            }
            for t, p in enumerate([20.0, 20.0, 180.0, 180.0])
        ]
        + [
            {
                "participant": "town",
                "side": "buy",
                "quantity_kw": 200.0,
                "price": 250.0,
                "period": t,
                "bus": 24,
            }
            for t in range(4)
        ]
    )
    specs = [
        parts.StorageBid(participant="s", bus=32, capacity_kwh=200.0, p_charge_max_kw=100.0),
        parts.FlexibleLoad(
            participant="f", bus=2, energy_kwh=150.0, p_max_kw=80.0, utility_per_mwh=120.0
        ),
    ]
    upstream = lem.Upstream(import_price=150.0, export_price=10.0)
    result = lem.clear(
        bids,
        participants=specs,
        upstream=upstream,
        network=feeder,
        formulation=LinDistFlow(losses="linear"),
    )
    nodal = result.prices.set_index(["bus", "period"])["price"]
    responses = result.tables["best_responses"].set_index("participant")
    schedules = result.tables["schedules"]
    for spec in specs:
        price = nodal.loc[spec.bus].reindex(range(4)).to_numpy()
        own = schedules[schedules["participant"] == spec.participant]
        assert own["price"].to_numpy() == pytest.approx(price)
        best = BEST[spec.kind](spec, price, 1.0)
        assert responses.loc[spec.participant, "profit"] == pytest.approx(best, abs=TOL)
    assert len(set(nodal.round(6))) > 2  # the buses' prices do differ
    assert abs(result.kpis["reconciliation_error"]) <= 1e-6
