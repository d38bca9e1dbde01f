"""Model reuse between scenarios gives what a full rebuild gives.

The reference is the path without reuse: ``pipeline.run_case`` (load, build, compile, solve
per case) and ``batch.run(..., reuse=False)``. Reuse must also step aside where a case
changes its structure, and report which rows reused a model.
"""

from pathlib import Path

import pandas as pd
import pyomo.environ as pyo
import pytest
import scipy.sparse as sp

from gridmarkets import batch, pipeline
from gridmarkets.case import load_case, shipped_cases_dir, validate
from gridmarkets.errors import InfeasibleError, InputError
from gridmarkets.models import lem
from gridmarkets.networks import load
from gridmarkets.solvers import compile_model, solve
from gridmarkets.solvers.persistent import PersistentLP
from gridmarkets.specs import lem as lem_case
from gridmarkets.study import load_study, make_study

pytestmark = pytest.mark.solve

STUDIES = sorted((Path(__file__).resolve().parents[2] / "data" / "studies").glob("lem_*.yaml"))
TABLES = ["accepted", "prices", "settlement"]
UPSTREAM = lem.Upstream(import_price=120.0, export_price=30.0, capacity_kw=900.0)


def assert_same_result(reused, rebuilt, tables=TABLES):
    assert reused.kpis == pytest.approx(rebuilt.kpis, rel=1e-9, abs=1e-9)
    for name in tables:
        pd.testing.assert_frame_equal(reused.tables[name], rebuilt.tables[name], rtol=1e-9)
    assert_same_summary(reused.ac_check, rebuilt.ac_check, "ac_check")


def assert_same_summary(reused, rebuilt, path: str) -> None:
    """Equal nested summaries: numbers to 1e-9, everything else exactly."""
    if isinstance(rebuilt, dict):
        assert isinstance(reused, dict) and set(reused) == set(rebuilt), path
        for key, value in rebuilt.items():
            assert_same_summary(reused[key], value, f"{path}.{key}")
    elif isinstance(rebuilt, list):
        assert isinstance(reused, list) and len(reused) == len(rebuilt), path
        for k, (a, b) in enumerate(zip(reused, rebuilt, strict=True)):
            assert_same_summary(a, b, f"{path}[{k}]")
    elif isinstance(rebuilt, float):
        assert reused == pytest.approx(rebuilt, rel=1e-9, abs=1e-12), path
    else:
        assert reused == rebuilt, path


def run_both(cases):
    """Each case through one ReusingRunner and through run_case; the reuse flags."""
    runner, flags = lem_case.ReusingRunner(), []
    for case in cases:
        assert_same_result(runner(case, {}), pipeline.run_case(case, {}))
        flags.append(runner.reused)
    return flags


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_the_shipped_studies_reuse_one_model_and_match_full_rebuilds(path):
    study = load_study(path)
    cases = [validate(s.case, "scenario") for s in study.scenarios]
    assert run_both(cases) == [False] + [True] * (len(cases) - 1)


def feeder_case(**changes):
    """A small lossless LEM on case33bw (a model that can be kept) with an upstream grid:
    two sellers, two buyers.

    In every variation below one block (or the import) is partly accepted in each
    period, so the nodal prices are unique: a tie would let two correct solves report
    different prices from the interval of supporting prices."""
    data = {
        "model": "lem",
        "name": "lem_case33",
        "horizon": {"periods": 2, "resolution_minutes": 60},
        "network": {"source": "pandapower", "name": "case33bw", "losses": "none"},
        "upstream": {"import_price": 120.0, "export_price": 30.0, "capacity_kw": 900.0},
        "participants": {
            "pv": {"side": "sell", "bus": 17, "blocks": [{"quantity_kw": [400, 0], "price": 10}]},
            "chp": {"side": "sell", "bus": 30, "blocks": [{"quantity_kw": 300, "price": 90}]},
            "home": {"side": "buy", "bus": 24, "blocks": [{"quantity_kw": 500, "price": 250}]},
            "shop": {"side": "buy", "bus": 12, "blocks": [{"quantity_kw": 250, "price": 100}]},
        },
    }
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return validate(data, "feeder case")


def test_on_a_feeder_data_changes_reuse_and_structure_changes_rebuild():
    cases = [
        feeder_case(),
        feeder_case(**{"participants.chp.blocks.0.price": 200.0}),
        feeder_case(**{"upstream.import_price": [60.0, 300.0]}),
        feeder_case(**{"participants.home.blocks.0.quantity_kw": [50.0, 700.0]}),
        feeder_case(**{"participants.home.bus": 5}),  # moved: another model
        feeder_case(**{"participants.home.bus": 5, "upstream.capacity_kw": 100.0}),
        feeder_case(**{"participants.home.bus": 5, "upstream.capacity_kw": 100.0}),
    ]
    assert run_both(cases) == [False, True, True, True, False, False, True]


@pytest.mark.parametrize("losses", ["linear", "iterate"])
def test_losses_rebuild_for_every_case(losses):
    """Linearising at a case's own solution changes the loss coefficients, so no
    compiled LP is kept."""
    cases = [
        feeder_case(**{"network.losses": losses}),
        feeder_case(**{"network.losses": losses, "participants.chp.blocks.0.price": 200.0}),
    ]
    assert run_both(cases) == [False, False]


def test_a_milp_market_is_rebuilt_for_every_case():
    cases = [
        feeder_case(**{"participants.chp.blocks.0.indivisible": True}),
        feeder_case(**{"participants.chp.blocks.0.indivisible": True, "upstream.export_price": 0}),
    ]
    assert run_both(cases) == [False, False]


def test_the_persistent_lp_is_the_lp_of_a_fresh_compile():
    first, second = feeder_case(), feeder_case(**{"participants.pv.blocks.0.price": 70.0})
    feeder = load("case33bw")
    lp = PersistentLP(lem.build(lem_case.case_bids(first), upstream=UPSTREAM, network=feeder))
    cheaper = lem.Upstream(import_price=[60.0, 200.0], export_price=30.0, capacity_kw=900.0)
    lem.update(lp.model, lem_case.case_bids(second), upstream=cheaper)
    lp.solve()
    fresh = compile_model(lem.build(lem_case.case_bids(second), upstream=cheaper, network=feeder))
    assert canonical(lp.form) == canonical(fresh)


def canonical(form):
    """The LP by names, not positions: the order of the columns may differ between
    two compiles of the same model (see gridmarkets.solvers.persistent)."""
    lp = form.lp
    names = [var.name for var in form.columns]
    columns = sorted(zip(names, lp.col_cost_, lp.col_lower_, lp.col_upper_, strict=True))
    a = sp.csc_array(
        (lp.a_matrix_.value_, lp.a_matrix_.index_, lp.a_matrix_.start_),
        shape=(lp.num_row_, lp.num_col_),
    ).tocsr()
    rows = sorted(
        (
            form.rows[k].name,
            lp.row_lower_[k],
            lp.row_upper_[k],
            sorted((names[j], v) for j, v in zip(a[[k]].indices, a[[k]].data, strict=True)),
        )
        for k in range(lp.num_row_)
    )
    return columns, rows, lp.offset_


def test_an_lp_made_infeasible_by_its_bounds_raises_as_a_fresh_solve_does():
    m = pyo.ConcreteModel(name="tiny")
    m.x = pyo.Var(bounds=(0, 10))
    m.cap = pyo.Constraint(expr=m.x <= 3)
    m.obj = pyo.Objective(expr=2 * m.x, sense=pyo.maximize)
    lp = PersistentLP(m)
    assert lp.solve().objective == pytest.approx(6.0)
    m.x.setlb(5)
    with pytest.raises(InfeasibleError) as reused:
        lp.solve()
    with pytest.raises(InfeasibleError) as fresh:
        solve(m)
    assert str(reused.value) == str(fresh.value)


def test_a_refused_update_leaves_the_model_as_it_was():
    bids = pd.DataFrame(
        {"participant": ["a", "b"], "side": ["sell", "buy"], "quantity_kw": [5.0, 4.0]}
    ).assign(price=[20.0, 300.0])
    m = lem.build(bids)
    before = lem.results(m, solve(m)).kpis
    with pytest.raises(InputError, match="not the blocks"):
        lem.update(m, bids.assign(participant=["a", "c"], price=[1.0, 2.0]))
    with pytest.raises(InputError, match="upstream"):
        lem.update(m, bids, upstream=lem.Upstream(100.0, 10.0))
    assert lem.results(m, solve(m)).kpis == before


def test_a_study_gives_the_same_rows_with_and_without_reuse(tmp_path):
    study = load_study(STUDIES[0])
    reused = batch.run(study, workers=2, out=tmp_path / "on", progress=False)
    rebuilt = batch.run(study, workers=2, out=tmp_path / "off", progress=False, reuse=False)
    kpis = study.spec.kpis
    same = ["scenario", *study.parameters, "status", *kpis, "objective", "gap", "case_hash"]
    pd.testing.assert_frame_equal(reused[same], rebuilt[same], rtol=1e-9)
    assert not rebuilt["reused"].any()
    workers = reused["worker"].nunique()
    assert reused["reused"].sum() == len(reused) - workers  # one build per worker


def test_reuse_false_in_the_study_file_builds_every_scenario():
    parameters = {"participants.chp_c.blocks.0.price": {"values": [30.0, 90.0, 150.0]}}
    data = {"base": "lem_copperplate", "parameters": parameters, "reuse": False}
    frame = batch.run(make_study(data), workers=1, progress=False)
    assert (frame["status"] == "optimal").all() and not frame["reused"].any()


def test_every_models_runner_keeps_the_feeder_while_the_network_is_the_same(monkeypatch):
    """pipeline.ReusingRunner (the runner of models without their own) loads a feeder
    once per network and answers as run_case does."""
    loads = []
    real = pipeline.load_feeder
    monkeypatch.setattr(pipeline, "load_feeder", lambda case: loads.append(1) or real(case))
    p2p = shipped_cases_dir() / "p2p_feeder.yaml"
    cases = [
        load_case(p2p),
        load_case(p2p, ["peers.chp_24.blocks.0.price=40"]),
        load_case(p2p, ["network.options={vmin_pu: 0.9}"]),  # another network
    ]
    runner = pipeline.ReusingRunner()
    for case, new_load in zip(cases, (1, 0, 1), strict=True):
        before = len(loads)
        kept = runner(case, {})
        assert len(loads) - before == new_load and runner.reused is False
        assert_same_result(kept, pipeline.run_case(case, {}), ["trades", "peers"])
