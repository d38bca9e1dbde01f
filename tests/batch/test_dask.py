"""The same study through the local pool and through a Dask LocalCluster gives the same rows."""

import os
import socket

import pandas as pd
import pytest
from batch_fakes import PRICE, LinearRunner

from gridmarkets import batch
from gridmarkets.study import make_study

distributed = pytest.importorskip("distributed")

SAME = ["scenario", PRICE, "status", "welfare", "message", "objective", "case_hash"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        yield local


def fake_study():
    parameters = {PRICE: {"values": [10.0, 13.0, -1.0, 50.0, 90.0]}}
    data = {"base": "lem_copperplate", "parameters": parameters, "kpis": ["welfare"]}
    return make_study(data, source="fake.yaml")


@pytest.mark.unit
def test_dask_and_the_local_pool_give_the_same_rows(cluster, tmp_path):
    runner = LinearRunner()
    local = batch.run(fake_study(), workers=2, progress=False, runner=runner)
    remote = batch.run(
        fake_study(),
        scheduler=cluster.scheduler_address,
        out=tmp_path,
        progress=False,
        runner=runner,
    )
    pd.testing.assert_frame_equal(local[SAME], remote[SAME])
    here = f"{socket.gethostname()}:{os.getpid()}"  # processes=False: Dask runs in this process
    assert (remote["worker"] == here).all() and (local["worker"] != here).all()


@pytest.mark.unit
def test_a_client_object_is_accepted(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        frame = batch.run(fake_study(), scheduler=client, progress=False, runner=LinearRunner())
    assert frame.loc[frame[PRICE] == 90.0, "welfare"].item() == 910.0


@pytest.mark.unit
def test_a_killed_dask_worker_loses_no_row_and_recomputes_no_stored_one(tmp_path):
    """The worker process running the scenario priced 50 dies (os._exit); its nanny
    starts a new one and Dask reschedules. Every scenario ends solved; one whose row was
    stored before the death is never computed again (one finished but not yet handed
    over may be: its result died with the worker)."""
    from batch_fakes import ledger_counts

    out, ledger, trap = tmp_path / "out", tmp_path / "ledger.txt", tmp_path / "trap"
    trap.touch()
    runner = LinearRunner(
        ledger,
        trap=trap,
        trap_price=50.0,
        trap_mode="exit",
        sleep=0.2,
        store=out / batch.STORE_NAME,
    )
    prices = [10.0, 20.0, 30.0, 50.0, 60.0, 70.0]
    data = {"base": "lem_copperplate", "parameters": {PRICE: {"values": prices}}}
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        frame = batch.run(
            make_study(data),
            scheduler=cluster.scheduler_address,
            out=out,
            progress=False,
            runner=runner,
        )
    assert not trap.exists()  # the worker did die
    before = [float(p) for p in trap.with_suffix(".stored").read_text().split()]
    assert (frame["status"] == "optimal").all()
    assert frame["welfare"].tolist() == [1000.0 - p for p in prices]
    counts = ledger_counts(ledger)
    assert before and all(counts[p] == 1 for p in before)
    assert set(counts) == set(prices)
    assert frame["worker"].nunique() >= 2  # the rows came from two worker processes
