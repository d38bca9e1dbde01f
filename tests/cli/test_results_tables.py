"""What a solve writes: timestamps, network tables, money units, column meanings, read().

References: timestamps computed here from the case file's own ``horizon``; pandapower's
AC power flow run here on the injections the solve wrote (its ``res_bus`` and
``res_line``); market identities (accepted at most offered, the sellers' accepted power
equals the buyers' in a copper-plate market without upstream, a trade's sold and
bought power); the tables in memory for :func:`gridmarkets.results.read`.
"""

import datetime as dt
import json

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pandas as pd
import pytest
import yaml

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir, validate
from gridmarkets.errors import CaseError
from gridmarkets.results import Result, add_timestamps, money_name, read, unit_label, write
from gridmarkets.solvers import Solution

CASES = shipped_cases_dir()
ALL_CASES = sorted(path.stem for path in CASES.glob("*.yaml"))
#: Cheap shipped cases (a few seconds each): every model but the flexibility market,
#: with and without a start, on a feeder (p2p_feeder) and without one.
FAST_CASES = [
    "prosumer_home",
    "community_islanded",
    "aggregator_three_homes",
    "lem_copperplate",
    "p2p_community",
    "p2p_feeder",
]
SLOW_CASES = [name for name in ALL_CASES if name not in FAST_CASES]


def solved(name: str, tmp_path_factory) -> tuple[dict, Result, object]:
    """A shipped case's file, its Result (in memory) and the folder it was written to."""
    spec = load_case(CASES / f"{name}.yaml")
    result = pipeline.run_case(spec)
    out = write(result, tmp_path_factory.mktemp(name), spec.name)
    return yaml.safe_load((CASES / f"{name}.yaml").read_text()), result, out


@pytest.fixture(scope="module", params=FAST_CASES)
def fast_case(request, tmp_path_factory):
    return solved(request.param, tmp_path_factory)


@pytest.fixture(
    scope="module", params=[pytest.param(n, marks=pytest.mark.slow) for n in SLOW_CASES]
)
def slow_case(request, tmp_path_factory):
    return solved(request.param, tmp_path_factory)


def fake_solution() -> Solution:
    return Solution(
        status="optimal",
        optimal=True,
        objective=12.5,
        best_bound=12.5,
        gap=0.0,
        is_mip=False,
        duals_from="lp",
        build_seconds=0.1,
        translate_seconds=0.01,
        solve_seconds=0.02,
        n_variables=3,
        n_binaries=0,
        n_constraints=2,
        n_nonzeros=4,
        highs_version="1.0",
    )


# --- money ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_money_columns_name_the_currency_and_their_unit():
    assert money_name("price", "EUR") == "price_eur_per_mwh"
    assert money_name("incentive_per_mwh", "CHF") == "incentive_chf_per_mwh"
    assert money_name("payment", "USD") == "payment_usd"
    assert money_name("p_kw", "EUR") == "p_kw"
    # a reactive price part is per Mvarh; the P2P preference cost per MWh, not an amount
    assert money_name("price_q", "EUR", "feeder_prices") == "price_q_eur_per_mvarh"
    assert money_name("cost", "EUR", "pair_prices", "p2p") == "cost_eur_per_mwh"
    assert money_name("cost", "EUR", "accepted", "flexibility") == "cost_eur"
    assert unit_label("price", "GBP") == "price (GBP/MWh)"
    assert unit_label("soc_kwh", "EUR") == "soc (kWh)"


@pytest.mark.unit
def test_the_currency_is_a_case_field_eur_by_default():
    data = yaml.safe_load((CASES / "lem_copperplate.yaml").read_text())
    assert validate(dict(data)).currency == "EUR"
    assert validate({**data, "currency": "CHF"}).currency == "CHF"
    with pytest.raises(CaseError, match="currency"):
        validate({**data, "currency": "euro"})


# --- write and read ------------------------------------------------------------------------


@pytest.fixture
def tricky_result() -> Result:
    """Tables of every column type a model writes, an empty one and float noise."""
    start = pd.Timestamp("2024-03-31 00:00")
    table = pd.DataFrame(
        {
            "participant": ["a", "b", "c"],
            "period": [0, 1, 2],
            "timestamp": [start + pd.Timedelta(hours=k) for k in range(3)],
            "bus": [5, None, 7],
            "price": [0.1 + 0.2, -1e-13, 123456.789012345],
            "accepted_kw": [1.0, np.nan, 2.5],
            "fixed": [True, False, True],
            "block": [0, 1, 2],
        }
    )
    empty = pd.DataFrame(columns=["member", "appliance", "energy_kwh"])
    kpis = {"social_welfare": 3.25, "traded_kwh": 4.0}
    return Result("lem", {"accepted": table, "appliances": empty}, kpis, fake_solution())


@pytest.mark.unit
def test_read_gives_back_what_write_wrote(tricky_result, tmp_path):
    tricky_result.currency = "CHF"
    write(tricky_result, tmp_path, "tricky")
    back = read(tmp_path)
    assert (back.model, back.currency, back.kpis) == ("lem", "CHF", tricky_result.kpis)
    assert back.solution.objective == tricky_result.solution.objective
    assert list(back.tables) == ["accepted"]  # the empty table is not written
    pd.testing.assert_frame_equal(
        back.accepted, tricky_result.accepted, check_dtype=False, atol=1e-9, rtol=1e-11
    )
    assert back.accepted["timestamp"].dtype.kind == "M"
    assert back.accepted["fixed"].dtype == bool


@pytest.mark.unit
def test_written_files_have_units_rounded_floats_and_no_header_only_csv(tricky_result, tmp_path):
    (tmp_path / "appliances.csv").write_text("member,appliance,energy_kwh\n")  # a stale one
    write(tricky_result, tmp_path)
    assert not (tmp_path / "appliances.csv").exists()
    text = (tmp_path / "accepted.csv").read_text()
    header, first, second, third = text.splitlines()
    # money gains its currency; every other column keeps its in-memory name
    assert header.split(",") == [
        "participant",
        "period",
        "timestamp",
        "bus",
        "price_eur_per_mwh",
        "accepted_kw",
        "fixed",
        "block",
    ]
    assert first.split(",")[4] == "0.3"  # not 0.30000000000000004
    assert second.split(",")[4] == "0"  # float noise, without a sign
    assert float(third.split(",")[4]) == pytest.approx(123456.789012345, rel=1e-11)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["currency"] == "EUR"
    assert summary["units"] == {"objective": "EUR", "social_welfare": "EUR"}


@pytest.mark.unit
def test_repr_is_one_short_line(tricky_result):
    big = pd.DataFrame({"period": range(20000), "p_kw": np.arange(20000.0)})
    tricky_result.tables["power"] = big
    text = repr(tricky_result)
    assert "\n" not in text and len(text) < 200
    assert "power 20000x2" in text and "accepted 3x8" in text and "optimal" in text


@pytest.mark.unit
def test_timestamps_follow_the_period_at_the_resolution():
    start = dt.datetime(2016, 6, 1)
    stamps = [start + dt.timedelta(minutes=15 * k) for k in range(96)]
    tables = {
        "a": pd.DataFrame({"x": [1, 2], "period": [0, 95]}),
        "b": pd.DataFrame({"period": [3], "x": [0], "timestamp": [None]}),
        "c": pd.DataFrame({"member": ["m"]}),
    }
    add_timestamps(tables, stamps)
    assert list(tables["a"].columns) == ["x", "period", "timestamp"]
    assert list(tables["a"]["timestamp"]) == [start, dt.datetime(2016, 6, 1, 23, 45)]
    assert list(tables["b"].columns) == ["period", "timestamp", "x"]
    assert tables["b"]["timestamp"].iloc[0] == dt.datetime(2016, 6, 1, 0, 45)
    assert list(tables["c"].columns) == ["member"]


# --- every shipped case ----------------------------------------------------------------------


def check_timestamps(case_file: dict, out) -> None:
    """Every written table with a period has the case file's timestamps, or none
    without a start."""
    horizon = case_file.get("horizon", {})
    start = horizon.get("start")
    step = dt.timedelta(minutes=horizon.get("resolution_minutes", 60))
    for path in out.glob("*.csv"):
        table = pd.read_csv(path)
        if "period" not in table:
            continue
        if start is None:
            assert "timestamp" not in table, path.name
            continue
        start = pd.Timestamp(start)
        expected = [start + k * step for k in table["period"]]
        columns = list(table.columns)
        assert columns[columns.index("period") + 1] == "timestamp", path.name
        assert list(pd.to_datetime(table["timestamp"])) == expected, path.name


def check_round_trip(result: Result, out) -> None:
    back = read(out)
    assert back.kpis == pytest.approx(result.kpis, nan_ok=True)
    written = {name: t for name, t in result.tables.items() if not t.empty}
    assert set(back.tables) == set(written)
    for name, table in written.items():
        pd.testing.assert_frame_equal(
            one_null(back.tables[name]),
            one_null(table),
            check_dtype=False,
            atol=1e-9,
            rtol=1e-11,
            obj=name,
        )


def one_null(table: pd.DataFrame) -> pd.DataFrame:
    """None and NaN as one missing value (a CSV file has one)."""
    return table.reset_index(drop=True).astype(object).where(table.notna().to_numpy(), np.nan)


def check_plots(result: Result, out) -> None:
    """Every model writes plots, labelled files that are real PNGs."""
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == set(result.plots) and pngs
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name


@pytest.mark.solve
def test_fast_cases_write_timestamps_round_trip_and_plot(fast_case):
    case_file, result, out = fast_case
    check_timestamps(case_file, out)
    check_round_trip(result, out)
    check_plots(result, out)


def test_every_other_shipped_case_writes_timestamps_round_trips_and_plots(slow_case):
    case_file, result, out = slow_case
    check_timestamps(case_file, out)
    check_round_trip(result, out)
    check_plots(result, out)


# --- column meanings ---------------------------------------------------------------------------


def check_same_names(result: Result, out, name: str) -> pd.DataFrame:
    """Table ``name`` as written, whose header is the in-memory one but for money (which
    gains its currency)."""
    written = pd.read_csv(out / f"{name}.csv")
    memory = result.tables[name].columns
    assert list(written.columns) == [
        money_name(c, result.currency, name, result.model) for c in memory
    ]
    return written


@pytest.mark.solve
def test_lem_and_p2p_name_offered_accepted_and_traded_power_alike_in_memory_and_on_disk(
    tmp_path_factory,
):
    _, result, out = solved("lem_copperplate", tmp_path_factory)
    for accepted in (result.accepted, check_same_names(result, out, "accepted")):
        assert (accepted["accepted_kw"] <= accepted["offered_kw"] + 1e-9).all()
        assert accepted["accepted_kw"].sum() > 0 and "quantity_kw" not in accepted
    _, result, out = solved("p2p_community", tmp_path_factory)
    for trades in (result.trades, check_same_names(result, out, "trades")):
        assert np.allclose(trades["traded_kw"], trades["sold_kw"])
        assert np.allclose(trades["traded_kw"], trades["bought_kw"])
        assert "quantity_kw" not in trades


@pytest.mark.slow
def test_the_flexibility_market_names_offered_and_accepted_power_alike_in_memory_and_on_disk(
    tmp_path_factory,
):
    _, result, out = solved("flexibility_lv_noon", tmp_path_factory)
    for table in (result.accepted, check_same_names(result, out, "accepted")):
        assert (table["accepted_kw"] <= table["offered_kw"] + 1e-9).all()
        assert "quantity_kw" not in table
    accepted = check_same_names(result, out, "accepted")
    requirements = pd.read_csv(out / "requirements.csv")
    procured = accepted.groupby(["product", "period"])["accepted_kw"].sum()
    keys = pd.MultiIndex.from_frame(requirements[["product", "period"]])
    assert np.allclose(procured.reindex(keys).to_numpy(), requirements["procured_kw"])


# --- network tables against pandapower -------------------------------------------------------


#: pandapower's convergence tolerance (runpp's tolerance_mva = 1e-8 MVA): two power flows
#: of the same injections, started differently, agree on flows to about this (kW, kvar).
PP_TOLERANCE_KVA = 1e-5


def check_against_pandapower(net, injections: pd.DataFrame, out) -> pd.DataFrame:
    """Run pandapower on ``net`` with its own injections off and one sgen per bus carrying
    ``injections`` (bus, period, p_kw, q_kvar), period by period, and compare the written
    buses.csv and branches.csv with its res_bus, res_line and res_trafo. Returns buses."""
    buses, branches = pd.read_csv(out / "buses.csv"), pd.read_csv(out / "branches.csv")
    assert (net.line["g_us_per_km"] == 0).all()  # series flow = terminal flow in P
    for table in ("load", "sgen", "storage", "gen"):
        net[table]["in_service"] = False
    root = int(net.ext_grid["bus"].iloc[0])
    periods = sorted(buses["period"].unique())
    in_service = net.line["in_service"].sum() + net.trafo["in_service"].sum()
    assert len(branches) == in_service * len(periods)  # e.g. case33bw's tie lines are open
    for t in periods:
        now = injections[(injections["period"] == t) & (injections["bus"] != root)]
        net.sgen = net.sgen.iloc[0:0]
        by_bus = now.groupby("bus")[["p_kw", "q_kvar"]].sum()
        for bus, row in by_bus.iterrows():
            pp.create_sgen(net, int(bus), p_mw=row["p_kw"] / 1e3, q_mvar=row["q_kvar"] / 1e3)
        pp.runpp(net, numba=False)
        ours = buses[buses["period"] == t].set_index("bus")
        assert np.allclose(ours["v_pu_ac"], net.res_bus["vm_pu"].reindex(ours.index), atol=1e-8)
        lines = branches[(branches["period"] == t) & (branches["kind"] == "line")]
        lines = lines.set_index("element")
        res = net.res_line.loc[lines.index]
        forward = (net.line.loc[lines.index, "from_bus"] == lines["from_bus"]).to_numpy()
        p = np.where(forward, res["p_from_mw"], res["p_to_mw"]) * 1e3
        v_from = net.res_bus["vm_pu"].reindex(lines["from_bus"]).to_numpy()
        line = net.line.loc[lines.index]
        b_siemens = 2 * np.pi * net.f_hz * line["c_nf_per_km"] * 1e-9 * line["length_km"]
        b_siemens *= line["parallel"]
        vn_kv = net.bus.loc[lines["from_bus"], "vn_kv"].to_numpy()
        charging_kvar = (b_siemens / 2).to_numpy() * (vn_kv * v_from) ** 2 * 1e3
        q = np.where(forward, res["q_from_mvar"], res["q_to_mvar"]) * 1e3 + charging_kvar
        assert np.allclose(lines["p_kw_ac"], p, atol=PP_TOLERANCE_KVA)
        assert np.allclose(lines["q_kvar_ac"], q, atol=PP_TOLERANCE_KVA)
        assert np.allclose(lines["loading_percent_ac"], res["loading_percent"], atol=1e-6)
        assert np.allclose(lines["loss_kw_ac"], res["pl_mw"] * 1e3, atol=1e-6)
        trafos = branches[(branches["period"] == t) & (branches["kind"] == "trafo")]
        res = net.res_trafo.loc[trafos["element"]]
        assert np.allclose(trafos["loading_percent_ac"], res["loading_percent"], atol=1e-6)
        assert np.allclose(trafos["loss_kw_ac"], res["pl_mw"] * 1e3, atol=1e-6)
    return buses


@pytest.mark.solve
def test_buses_and_branches_agree_with_pandapowers_result_tables(tmp_path_factory):
    """p2p_feeder on case33bw: pandapower here, on the injections the solve wrote."""
    _, result, out = solved("p2p_feeder", tmp_path_factory)
    buses = check_against_pandapower(pn.case33bw(), pd.read_csv(out / "injections.csv"), out)
    assert len(buses) == 33 * buses["period"].nunique()
    # the linear columns: LinDistFlow is close to AC on this feeder, not equal to it
    assert (buses["v_pu_linear"] - buses["v_pu_ac"]).abs().max() < 0.01
    assert (buses["v_pu_linear"] != buses["v_pu_ac"]).any()
    assert {"feeder_map"} <= set(result.plots)


@pytest.mark.slow
def test_a_simbench_feeders_tables_agree_with_pandapower_trafo_included(tmp_path_factory):
    """prosumer_feeder on SimBench 1-LV-rural1--0-sw (cables with charging, the MV/LV
    transformer): the homes' net injections, export - import at their buses."""
    import simbench

    _, _, out = solved("prosumer_feeder", tmp_path_factory)
    grid = pd.read_csv(out / "grid.csv")
    injections = grid.assign(p_kw=grid["export_kw"] - grid["import_kw"], q_kvar=0.0)
    net = simbench.get_simbench_net("1-LV-rural1--0-sw")
    assert (net.line["c_nf_per_km"] > 0).any() and len(net.trafo) == 1
    check_against_pandapower(net, injections, out)


# --- sweep plots ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_sweep_axes_are_labelled_from_the_parameter_path_and_its_unit():
    from gridmarkets.study import parameter_label

    assert parameter_label("participants.chp_c.blocks.0.price") == "chp_c price (EUR/MWh)"
    assert parameter_label("participants.home_1.blocks.0.quantity_kw") == "home_1 quantity (kW)"
    assert parameter_label("upstream.import_price", "CHF") == "upstream import price (CHF/MWh)"
    assert parameter_label("horizon.periods") == "horizon periods"


@pytest.mark.unit
@pytest.mark.parametrize("design", ["grid", "latin_hypercube"])
def test_sweep_plots_write_one_png_per_kpi(tmp_path, design, monkeypatch):
    from types import SimpleNamespace

    from gridmarkets import plots

    a, b = "participants.chp_c.blocks.0.price", "participants.shop_4.blocks.0.price"
    points = [(x, y) for x in (30, 60, 90) for y in (100, 180)]
    frame = pd.DataFrame(
        {
            "scenario": range(len(points)),
            a: [x for x, _ in points],
            b: [y for _, y in points],
            "status": "optimal",
            "social_welfare": [x / 10 + y / 100 for x, y in points],
            "traded_kwh": [1.0 + x for x, _ in points],
            "message": None,
        }
    )
    study = SimpleNamespace(
        parameters=[a, b],
        spec=SimpleNamespace(design=design),
        scenarios=[SimpleNamespace(case={"currency": "EUR"})],
    )
    drawn = []
    for name in ("sweep_heatmap", "sweep_panels"):
        draw = getattr(plots, name)
        monkeypatch.setattr(
            plots, name, lambda *args, name=name, draw=draw: (drawn.append(name), draw(*args))
        )
    paths = plots.sweep_plots(frame, study, tmp_path)
    assert [p.name for p in paths] == ["social_welfare.png", "traded_kwh.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    expected = "sweep_heatmap" if design == "grid" else "sweep_panels"
    assert drawn == [expected, expected]


@pytest.mark.slow
def test_the_models_own_voltages_are_written_next_to_the_lossless_ones(tmp_path_factory):
    """lem_lv_grid iterates its losses against pandapower: its own voltages (v_pu_model)
    are nearer the AC ones than the lossless LinDistFlow of the same injections."""
    _, result, out = solved("lem_lv_grid", tmp_path_factory)
    assert result.ac_check["losses"] == "iterate"
    buses = pd.read_csv(out / "buses.csv")
    model = (buses["v_pu_model"] - buses["v_pu_ac"]).abs().max()
    lossless = (buses["v_pu_linear"] - buses["v_pu_ac"]).abs().max()
    assert model < lossless
    assert model == pytest.approx(result.ac_check["model_voltage_error_pu"], abs=1e-9)
