"""Scenarios: construction, error models' statistics, reduction, CSV errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets.errors import InputError
from gridmarkets.scenarios import Scenarios

pytestmark = pytest.mark.unit


def _forecast(periods: int = 24) -> pd.DataFrame:
    t = np.arange(periods)
    return pd.DataFrame({"load_kw": 1.0 + 0.5 * np.sin(t / 4), "pv_kw": 3.0 * (t % 12) / 12})


def test_normal_ar1_errors_have_the_stated_mean_std_and_autocorrelation():
    forecast = _forecast()
    rho, std = 0.6, 0.8
    s = Scenarios.from_forecast(forecast, n=4000, seed=3, std=std, rho=rho)
    errors = s.array() - forecast.to_numpy()[None]  # scenario x period x profile
    n = errors.shape[0]
    # mean 0 per period: standard error std / sqrt(n) = 0.013; 5 standard errors
    assert np.abs(errors.mean(axis=0)).max() < 5 * std / np.sqrt(n)
    # std per period: standard error about std / sqrt(2n) = 0.009 (1.1 %): within 6 %
    assert errors.std(axis=0) == pytest.approx(np.full(errors.shape[1:], std), rel=0.06)
    for lag in (1, 2, 3):
        corr = np.mean(
            [np.corrcoef(errors[:, t, 0], errors[:, t + lag, 0])[0, 1] for t in range(20)]
        )
        assert corr == pytest.approx(rho**lag, abs=0.03)


def test_std_fraction_scales_with_the_forecast_and_the_floor_applies():
    forecast = _forecast()
    s = Scenarios.from_forecast(forecast, n=3000, seed=1, std_fraction={"pv_kw": 0.2}, lower=0.0)
    values = s.array()
    assert (values >= 0).all()
    assert values[:, :, 0] == pytest.approx(np.broadcast_to(forecast["load_kw"], (3000, 24)))
    night = forecast["pv_kw"].to_numpy() == 0
    assert (values[:, night, 1] == 0).all()
    day = np.flatnonzero(forecast["pv_kw"].to_numpy() > 1.0)
    assert values[:, day, 1].std(axis=0) == pytest.approx(
        0.2 * forecast["pv_kw"].to_numpy()[day], rel=0.08
    )


def test_empirical_errors_are_blocks_of_the_residuals():
    residuals = pd.DataFrame({"load_kw": np.arange(50.0), "pv_kw": -np.arange(50.0)})
    forecast = pd.DataFrame({"load_kw": np.zeros(10), "pv_kw": np.zeros(10)})
    s = Scenarios.from_forecast(
        forecast, n=200, seed=5, error="empirical", residuals=residuals, block=4
    )
    errors = s.array()
    assert (errors[:, :, 1] == -errors[:, :, 0]).all()  # rows travel together
    steps = np.diff(errors[:, :, 0], axis=1)
    within = [t for t in range(9) if (t + 1) % 4]  # consecutive periods of one block
    assert (steps[:, within] == 1).all()
    assert set(np.unique(errors[:, :, 0])) <= set(residuals["load_kw"])
    # block starts uniform on 0..46: the mean residual drawn is near that of rows used
    assert errors[:, :, 0].mean() == pytest.approx(24.5, abs=1.5)


def test_the_seed_repeats_and_a_new_seed_differs():
    forecast = _forecast()
    a = Scenarios.from_forecast(forecast, n=20, seed=7, std=1.0, rho=0.5)
    b = Scenarios.from_forecast(forecast, n=20, seed=7, std=1.0, rho=0.5)
    c = Scenarios.from_forecast(forecast, n=20, seed=8, std=1.0, rho=0.5)
    pd.testing.assert_frame_equal(a.values, b.values)
    assert not np.allclose(a.array(), c.array())
    assert a.reduce(5, seed=2).names() == b.reduce(5, seed=2).names()


def _three_groups(rng: np.random.Generator) -> tuple[Scenarios, dict[int, float]]:
    """30 scenarios in three well separated groups with unequal masses."""
    level = np.repeat([0.0, 10.0, 20.0], [5, 10, 15])
    array = level[:, None, None] + 0.1 * rng.standard_normal((30, 6, 2))
    p = rng.uniform(0.5, 1.5, 30)
    s = Scenarios.from_array(array, ["load_kw", "pv_kw"], p / p.sum())
    masses = {g: float(p[level == g].sum() / p.sum()) for g in (0.0, 10.0, 20.0)}
    return s, masses


def test_reduction_keeps_group_masses_and_real_scenarios():
    s, masses = _three_groups(np.random.default_rng(0))
    reduced = s.reduce(3, seed=11)
    assert reduced.probability.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(reduced.names()) == 3
    for name in reduced.names():
        pd.testing.assert_frame_equal(reduced.profile(name), s.profile(name))
        group = round(float(s.profile(name).to_numpy().mean()) / 10) * 10.0
        assert reduced.probability[name] == pytest.approx(masses[group], abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 7, 29, 30, 40])
def test_reduction_probabilities_sum_to_one_for_any_k(k):
    s = Scenarios.from_forecast(_forecast(), n=30, seed=4, std=1.0, rho=0.3)
    reduced = s.reduce(k, seed=1)
    assert reduced.probability.sum() == pytest.approx(1.0, abs=1e-12)
    assert 1 <= len(reduced.names()) <= min(k, 30)
    assert set(reduced.names()) <= set(s.names())


def test_expected_subset_and_deterministic():
    rng = np.random.default_rng(2)
    array = rng.uniform(size=(4, 5, 2))
    p = np.array([0.1, 0.2, 0.3, 0.4])
    s = Scenarios.from_array(array, ["a", "b"], p)
    mean = (array * p[:, None, None]).sum(axis=0)
    assert s.expected().profile("expected").to_numpy() == pytest.approx(mean)
    sub = s.subset(["s1", "s3"])
    assert sub.probability.to_numpy() == pytest.approx([0.2 / 0.6, 0.4 / 0.6])
    one = Scenarios.deterministic(pd.DataFrame(array[0], columns=["a", "b"]))
    assert one.probability.to_dict() == {"base": 1.0} and one.periods() == 5


def test_probabilities_must_sum_to_one_and_periods_must_match():
    values = Scenarios.from_array(np.zeros((2, 3, 1)), ["x"]).values
    with pytest.raises(InputError, match="sums to 0.9"):
        Scenarios(pd.Series({"s0": 0.5, "s1": 0.4}), values)
    with pytest.raises(InputError, match="s1"):
        Scenarios(pd.Series({"s0": 0.5, "s1": 0.5}), values.drop(("s1", 2)))


def test_csv_round_trip(tmp_path):
    s = Scenarios.from_forecast(_forecast(6), n=3, seed=0, std=1.0)
    path = tmp_path / "scenarios.csv"
    s.to_frame().to_csv(path, index=False)
    back = Scenarios.from_csv(path)
    assert back.names() == s.names()
    assert back.array() == pytest.approx(s.array())
    assert back.probability.to_numpy() == pytest.approx(s.probability.to_numpy())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("scenario,period,profile,value\na,0,load_kw,1\na,1,load_kw,x\n", "line 3: value: 'x'"),
        ("scenario,period,profile,value\na,0,load_kw,1\na,zero,load_kw,1\n", "line 3: period"),
        ("scenario,period,value\na,0,1\n", "line 1: missing column"),
        ("scenario,period,profile,value\n,0,load_kw,1\n", "line 2: scenario: empty"),
        (
            "scenario,period,profile,value,probability\na,0,x,1,0.5\nb,0,x,1,0.4\n",
            "sums to 0.9",
        ),
        (
            "scenario,period,profile,value,probability\na,0,x,1,0.5\na,1,x,1,0.4\n",
            "more than one probability",
        ),
        ("scenario,period,profile,value\na,0,x,1\na,0,x,2\n", "given twice"),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        Scenarios.from_csv(path)
    assert "bad.csv" in str(err.value)


@pytest.mark.slow
def test_simbench_days_are_the_raw_profiles_of_neighbouring_days():
    import simbench

    from gridmarkets.networks import load

    feeder = load("1-LV-rural1--0-sw")
    start = 96 * 150 + 32  # 31 May 08:00
    s = Scenarios.from_simbench(
        feeder, {"load_kw": (7, "load"), "pv_kw": (7, "sgen")}, start, 8, 30, days=3
    )
    assert s.names() == ["d-1", "d+0", "d+1"]
    raw = simbench.get_absolute_values(feeder.net, profiles_instead_of_study_cases=True)
    at_bus = feeder.net.load.index[feeder.net.load["bus"] == 7]
    for shift, name in zip((-96, 0, 96), s.names(), strict=True):
        rows = raw[("load", "p_mw")].iloc[start + shift : start + shift + 16][at_bus]
        expected = rows.sum(axis=1).to_numpy().reshape(8, 2).mean(axis=1) * 1000
        assert s.profile(name)["load_kw"].to_numpy() == pytest.approx(expected)
