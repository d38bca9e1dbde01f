"""Fake model runners for the batch tests: picklable, instant, and countable.

Each computation appends one line (the case's price of ``chp_c``'s first block) to the
file named by ``GRIDMARKETS_TEST_LEDGER`` once it has finished, so a test counts how
often each scenario was computed. ``GRIDMARKETS_TEST_TRAP`` names a file: while it
exists, the scenario whose price equals ``GRIDMARKETS_TEST_TRAP_PRICE`` removes it and
then raises KeyboardInterrupt (``..._TRAP_MODE=interrupt``) or kills its worker process
(``..._TRAP_MODE=exit``): the trap fires once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gridmarkets.errors import InfeasibleError

PRICE = "participants.chp_c.blocks.0.price"


class FakeResult:
    """Stands for a Result: only ``summary()`` is read by the batch runner."""

    def __init__(self, kpis: dict, status: str = "optimal"):
        self.kpis, self.status = kpis, status

    def summary(self, case_name=None) -> dict:
        return {
            "status": self.status,
            "objective": self.kpis["welfare"],
            "gap": 0.0,
            "build_seconds": 0.001,
            "translate_seconds": 0.001,
            "solve_seconds": 0.001,
            "kpis": self.kpis,
            "ac_check": {"max_voltage_error_pu": 0.0, "violations": 0, "buses": [1, 2]},
        }


def price_of(case) -> float:
    return case.participants["chp_c"].blocks[0].price


def linear_runner(case, solve_options):
    """KPIs that are simple functions of chp_c's price: welfare = 1000 - price."""
    price = price_of(case)
    _spring_trap(price)
    if price < 0:
        raise InfeasibleError("model lem is infeasible (a negative price, by design)")
    if price == 13:
        raise RuntimeError("unlucky thirteen")
    time.sleep(float(os.environ.get("GRIDMARKETS_TEST_SLEEP", "0")))
    _ledger(price)
    return FakeResult({"welfare": 1000.0 - price, "double_price": 2.0 * price})


def _spring_trap(price: float) -> None:
    trap = os.environ.get("GRIDMARKETS_TEST_TRAP")
    if not trap or float(os.environ["GRIDMARKETS_TEST_TRAP_PRICE"]) != price:
        return
    try:
        Path(trap).unlink()
    except FileNotFoundError:
        return
    if os.environ.get("GRIDMARKETS_TEST_TRAP_MODE") == "exit":
        os._exit(3)
    raise KeyboardInterrupt


def _ledger(price: float) -> None:
    ledger = os.environ.get("GRIDMARKETS_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{price}\n")
