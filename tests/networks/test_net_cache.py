"""The disk cache of loaded nets: a hit skips the parse and gives the feeder a fresh parse
gives; a version change misses; a corrupt or foreign entry is rebuilt with a warning."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pandas as pd
import pytest

from gridmarkets.networks import feeder as feeder_module
from gridmarkets.networks import feeder_profiles, load, net_cache, net_injections

pytestmark = pytest.mark.unit


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(net_cache.CACHE_ENV, str(folder))
    return folder


def counting(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call; returns the record."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def assert_same_feeder(cached, fresh) -> None:
    pd.testing.assert_frame_equal(cached.buses, fresh.buses)
    pd.testing.assert_frame_equal(cached.branches, fresh.branches)
    assert (cached.root, cached.root_vm_pu, cached.s_base_kva, cached.merged) == (
        fresh.root,
        fresh.root_vm_pu,
        fresh.s_base_kva,
        fresh.merged,
    )
    for ours, theirs in zip(net_injections(cached), net_injections(fresh), strict=True):
        pd.testing.assert_series_equal(ours, theirs)


def test_simbench_second_load_skips_the_parse_and_equals_a_fresh_one(cache, monkeypatch):
    import simbench

    parses = counting(monkeypatch, simbench, "get_simbench_net")
    fresh = load("1-LV-rural1--0-sw")  # a miss: parsed from SimBench's CSV files, then stored
    cached = load("1-LV-rural1--0-sw")
    assert len(parses) == 1
    assert_same_feeder(cached, fresh)
    window = {"start": 14400, "periods": 96, "resolution_minutes": 15}
    pd.testing.assert_frame_equal(
        feeder_profiles(cached, **window), feeder_profiles(fresh, **window)
    )
    tables = [key for key, value in fresh.net.items() if isinstance(value, pd.DataFrame)]
    for table in tables:  # empty ones too: SimBench's have a profile column
        assert cached.net[table].dtypes.equals(fresh.net[table].dtypes), table
    raw_cached, raw_fresh = cached.net["profiles"], fresh.net["profiles"]
    assert raw_cached.keys() == raw_fresh.keys()
    for table in raw_fresh:
        pd.testing.assert_frame_equal(raw_cached[table], raw_fresh[table])


def test_builtin_is_cached_and_a_version_change_misses(cache, monkeypatch):
    builds = counting(monkeypatch, feeder_module, "_builtin_net")
    fresh = load("case33bw")
    assert_same_feeder(load("cigre_mv"), load("cigre_mv"))
    assert_same_feeder(load("case33bw"), fresh)
    assert [name for (name,) in builds] == ["case33bw", "create_cigre_network_mv"]
    newer = {"pandapower": "99.0", "simbench": "99.0", "gridmarkets": "99.0"}
    monkeypatch.setattr(net_cache, "version", lambda package: newer[package])
    assert_same_feeder(load("case33bw"), fresh)
    assert len(builds) == 3
    assert len(list(cache.glob("*.manifest.json"))) == 3  # two versions of case33bw, cigre_mv


def corrupt_net(paths) -> None:
    paths["net.json"].write_text('{"_class": "pandapowerNet", "_module": "pandapower.aux')


def corrupt_profiles(paths) -> None:
    paths["npz"].write_bytes(b"PK\x03\x04" + b"\x00" * 40)  # a zip header, then nothing


def foreign_class(paths) -> None:
    tree = json.loads(paths["net.json"].read_text())
    tree["_object"]["bus"]["_module"] = "os"
    paths["net.json"].write_text(json.dumps(tree))


def foreign_key(paths) -> None:
    manifest = json.loads(paths["manifest.json"].read_text())
    paths["manifest.json"].write_text(json.dumps({**manifest, "name": "case118"}))


@pytest.mark.parametrize("damage", [corrupt_net, corrupt_profiles, foreign_class, foreign_key])
def test_bad_entry_is_rebuilt_with_a_warning(cache, monkeypatch, caplog, damage):
    builds = counting(monkeypatch, feeder_module, "_builtin_net")
    fresh = load("case33bw")
    stem = next(cache.glob("*.manifest.json")).name.removesuffix(".manifest.json")
    damage({part: cache / f"{stem}.{part}" for part in ("manifest.json", "net.json", "npz")})
    with caplog.at_level(logging.WARNING, logger=net_cache.__name__):
        assert_same_feeder(load("case33bw"), fresh)
    assert len(builds) == 2
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert_same_feeder(load("case33bw"), fresh)  # the rebuilt entry is read again
    assert len(builds) == 2


def test_off_disables_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(net_cache.CACHE_ENV, "off")
    monkeypatch.chdir(tmp_path)
    builds = counting(monkeypatch, feeder_module, "_builtin_net")
    load("case33bw")
    load("case33bw")
    assert len(builds) == 2
    assert net_cache.cache_dir() is None
    assert not list(tmp_path.iterdir())


def test_default_folder_is_the_users_cache_folder(monkeypatch):
    from platformdirs import user_cache_dir

    monkeypatch.delenv(net_cache.CACHE_ENV, raising=False)
    assert net_cache.cache_dir() == Path(user_cache_dir("gridmarkets")) / "networks"


def test_concurrent_loads_build_once(cache, monkeypatch):
    builds = counting(monkeypatch, feeder_module, "_builtin_net")
    feeders, errors = [], []

    def run():
        try:
            feeders.append(load("case33bw"))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(builds) == 1
    for feeder in feeders[1:]:
        assert_same_feeder(feeder, feeders[0])
