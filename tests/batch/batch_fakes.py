"""A fake model runner for the batch tests: picklable, instant, countable, trappable.

Its KPIs are simple functions of the price of ``chp_c``'s first block, so a test
checks every row against the formula. Each finished computation appends the price to
``ledger``, so a test counts how often each scenario was computed. While the file
``trap`` exists, the scenario priced ``trap_price`` deletes it, then raises
KeyboardInterrupt (``trap_mode="interrupt"``) or kills its worker process
(``trap_mode="exit"``): the trap fires once. With ``store``, it first writes the prices
the results store holds at that moment to ``<trap>.stored``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gridmarkets.errors import InfeasibleError

PRICE = "participants.chp_c.blocks.0.price"


class FakeResult:
    """Stands for a Result: the batch runner reads only ``summary()``."""

    def __init__(self, kpis: dict):
        self.kpis = kpis

    def summary(self, case_name=None) -> dict:
        return {
            "status": "optimal",
            "objective": self.kpis["welfare"],
            "gap": 0.0,
            "build_seconds": 0.001,
            "translate_seconds": 0.001,
            "solve_seconds": 0.001,
            "kpis": self.kpis,
            "ac_check": {"max_voltage_error_pu": 0.0, "violations": 0, "buses": [1, 2]},
        }


@dataclass
class LinearRunner:
    """welfare = 1000 - price; a negative price is infeasible; price 13 crashes."""

    ledger: Path | None = None
    trap: Path | None = None
    trap_price: float | None = None
    trap_mode: str = "interrupt"
    sleep: float = 0.0
    store: Path | None = None

    def __call__(self, case, solve_options):
        price = case.participants["chp_c"].blocks[0].price
        self._spring_trap(price)
        if price < 0:
            raise InfeasibleError("model lem is infeasible (a negative price, by design)")
        if price == 13:
            raise RuntimeError("unlucky thirteen")
        time.sleep(self.sleep)
        if self.ledger is not None:
            with open(self.ledger, "a") as f:
                f.write(f"{price}\n")
        return FakeResult({"welfare": 1000.0 - price, "double_price": 2.0 * price})

    def _spring_trap(self, price: float) -> None:
        if self.trap is None or price != self.trap_price:
            return
        try:
            Path(self.trap).unlink()
        except FileNotFoundError:
            return
        if self.store is not None:
            stored = "\n".join(map(str, stored_prices(self.store)))
            Path(self.trap).with_suffix(".stored").write_text(stored)
        if self.trap_mode == "exit":
            os._exit(3)
        raise KeyboardInterrupt


def stored_prices(store: Path) -> list[float]:
    """The prices of the rows a results store holds (none before its table exists)."""
    try:
        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT parameters FROM scenarios").fetchall()
    except sqlite3.OperationalError:
        return []
    return [float(json.loads(text)[PRICE]) for (text,) in rows]


def ledger_counts(ledger: Path) -> dict[float, int]:
    """How often each price was computed."""
    counts: dict[float, int] = {}
    if ledger.exists():
        for line in ledger.read_text().split():
            counts[float(line)] = counts.get(float(line), 0) + 1
    return counts
