"""Peer-to-peer trading: full P2P, community-based and hybrid, central or by ADMM.

Peers are sellers, buyers or both, with block offers and bids per period in the bids
table of :mod:`gridmarkets.models.lem` (``participant`` is the peer). They trade
bilaterally along the edges of a trading graph, and trade what they cannot match with
the upstream grid at import and export prices (each peer has its own connection).

Architectures (the three of the seed chapter):

- ``full``: every peer trades with its partners on the graph (complete by default,
  ``"neighbours"`` — peers at the same or adjacent buses of the feeder —, or a list).
- ``community``: each peer trades only with its community's manager (an agent
  ``community:<name>`` with no energy of its own), and managers trade with each other.
- ``hybrid``: both: peers trade on the graph and with their community's manager.

Peers may also be stated in the participant vocabulary of
:mod:`gridmarkets.models.participants` (``participants``: quadratic cost or utility
curves with p_min/p_max, storage, flexible loads with an energy budget, device bids),
each in its own block whose net injection ``participant_kw`` enters the peer's balance
and whose welfare enters the objective; and a block peer may have energy budgets over a
window of its blocks (``budgets``: ``energy_budget_max``/``energy_budget_min``, kWh).
Peers whose periods are coupled this way, or whose costs are curved, are "model peers":
ADMM steps them with their own model (:class:`~gridmarkets.solvers.admm.ModelAgent`).

The clearing is one LP (welfare maximisation; a QP with curves or ``quadratic``). For
every agent ``i`` (peer or manager), ordered pair (i, j) and period t, with
``trade_kw[i,j,t] = sell_kw - buy_kw`` what i sells to j (negative: buys)::

    sum_sell q - sum_buy q + import - export - sum_j trade_kw[i,j,t] = 0    (balance, kW)
    trade_kw[i,j,t] + trade_kw[j,i,t] = 0                               (reciprocity)
    welfare = sum_buy price q dt - sum_sell price q dt - import cost + export revenue
              - sum_(i,j,t) (s_ijt sell_kw + b_ijt buy_kw) dt
              - gamma/2 (sell_kw^2 + buy_kw^2) dt

The dual of a reciprocity constraint is the bilateral price of the pair (what one more
kW that the pair must deliver would cost), at the root; each side settles it at its own
node (see Settlement below). ``s_ijt`` and ``b_ijt`` (currency/MWh, >= 0) are what i
pays per MWh it sells to / buys from j in period t: its preference cost of trading
with j — distance, lower for green energy or neighbours; one value, one per pair, or
one per pair and period — (:func:`hop_costs` derives one from the feeder), the same
on both sides, plus, when j is of another community, its community's export cost
(selling) or import cost (buying): a community's boundary may cost differently in
and out (``boundary_costs``). Without
distinct preference costs an LP's bilateral trades are rarely unique (many pairs may
carry the same energy at the same welfare); with them they are, but cycles of trades
whose costs nearly cancel leave welfare almost flat, so the distributed solution
(``method="admm"``, :func:`gridmarkets.solvers.admm.consensus_admm`) needs tight
stopping tolerances to reach the LP's trades. ``quadratic`` (gamma > 0,
(currency/MWh)/kW) adds a strictly convex term that makes the trades unique in any
case (solved as a QP by HiGHS through :func:`gridmarkets.solvers.solve`).

The grid: every block's injection (kW, and its reactive power from
:func:`~gridmarkets.models.lem.reactive_ratio`) meets the network through
:func:`gridmarkets.networks.attach_grid`: LinDistFlow with ``network=feeder``
(network-aware clearing, the DSO's limits in the LP), CopperPlate without one, or the
``formulation`` given. The upstream grid injects ``upstream_kw`` at the root, a free
variable (the balances above already make it the peers' grid trade), so the root is the
slack bus and its nodal price is 0. Or the market clears without the network and
:func:`dso_check` names the trades whose transactions overload a branch and how much
each must be cut.

Settlement (one rule, with or without a network). Write lam_i for the dual of agent
i's balance, pi_ij for that of the reciprocity of (i, j) (at the root) and rho_i for
the nodal price of i's bus from :func:`gridmarkets.networks.nodal_prices` (0 without a
network, and for managers, which sit at the root). The LP's stationarity conditions
for peer i's own variables read, per period (currency/MWh)::

    block b at price c_b:  whole where c_b < lam_i + rho_i (a sell block; > for a buy
                           block), none where the reverse, in part only where equal
    import:                capacity_kw where import_price < lam_i, none where >, in
                           between only where equal (export mirrored at export_price)
    trade with j:          pi_ij - s_ij <= lam_i <= pi_ij + b_ij, selling only
                           where the left holds with equality, buying only the right

Add rho_i throughout and they are the optimality conditions of peer i's own problem,
with lam_i + rho_i the multiplier of its balance, when it trades with j at
``pi_ij + rho_i`` and with the grid at ``import_price + rho_i`` and ``export_price +
rho_i``. That problem is a convex LP (with ``quadratic``, a QP whose trade condition adds
gamma x to s_ij and b_ij), so the cleared schedule is
the peer's best response at those prices. Hence the rule: a trade is settled at each
end's nodal price -- the seller is paid ``pi_ij + rho_seller``, the buyer pays ``pi_ij
+ rho_buyer`` -- and the difference, ``rho_buyer - rho_seller`` per MWh, is a network
charge paid to the DSO; a peer's grid trade pays its tariff plus ``rho_i`` per MWh to
the DSO. Per peer the network charges add up to ``-rho_i`` times its net injection, so
the DSO receives ``-sum_b rho_b p_b dt``, the nodal prices' merchandising surplus (the
rent of the binding limits). Trading with the grid alone is one of the choices of the
peer's own problem, so its surplus is at least its grid-only baseline at its prices
(tariffs plus rho_i: the tariffs themselves wherever no limit binds, rho = 0): no peer
is worse off for trading (``individually_rational``). Without a network rho = 0 and
the rule is the settlement at the bilateral prices, with zero network charges. The
``settlement`` table lists every party's payment (peers, managers, the DSO, the
upstream grid); they sum to zero (``reconciliation_error``).

Units: kW, kWh, currency/MWh; a positive payment is paid by the peer.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import InfeasibleError, InputError
from gridmarkets.inputs import plain
from gridmarkets.models.lem import BID_COLUMNS, Upstream, prepare_bids, reactive_ratio
from gridmarkets.models.participants import (
    Participant,
    add_participant,
    curvatures,
    objective_scale,
)
from gridmarkets.results import Result
from gridmarkets.solvers import Solution, record_build_time, scale_objective_by, solve

Architecture = Literal["full", "community", "hybrid"]
MANAGER_PREFIX = "community:"
UPSTREAM = "upstream"
_TOL_KW = 1e-6


# --- the market's data ----------------------------------------------------------------


@dataclass
class Market:
    """A P2P market's data, prepared once for the LP, ADMM and the result tables.

    Attributes
    ----------
    bids : the prepared bids table (see :func:`gridmarkets.models.lem.prepare_bids`).
    peers, managers : agent ids; ``agents = peers + managers``.
    periods : sorted periods.
    pairs : ordered trading pairs (both directions of every edge).
    sell_cost, buy_cost : (pairs x periods) what ``pairs[p][0]`` pays per MWh it sells
        to / buys from ``pairs[p][1]`` (currency/MWh, >= 0): its preference cost plus,
        across a community boundary, its community's export / import cost.
    bus, community : per peer (None when not given).
    upstream : tariffs and per-peer connection capacity, or None (no grid).
    feeder : the feeder for network-aware clearing, or None.
    budgets : energy budgets (see :func:`build`), one row each.
    participants : the peers stated in the participant vocabulary, by peer id.
    """

    bids: pd.DataFrame
    peers: list[str]
    managers: list[str]
    periods: list[int]
    pairs: list[tuple[str, str]]
    sell_cost: np.ndarray
    buy_cost: np.ndarray
    bus: dict[str, Any]
    community: dict[str, Any]
    upstream: Upstream | None
    feeder: Any
    period_hours: float
    quadratic: float
    architecture: str
    budgets: pd.DataFrame
    participants: dict[str, Participant]

    @property
    def agents(self) -> list[str]:
        return self.peers + self.managers

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Unordered pairs, each once (the first of its two directions)."""
        seen, edges = set(), []
        for i, j in self.pairs:
            if (j, i) not in seen:
                seen.add((i, j))
                edges.append((i, j))
        return edges

    def tariffs(self) -> tuple[np.ndarray, np.ndarray]:
        """Import and export prices per period (currency/MWh)."""
        return self.upstream.per_period(self.periods)

    @property
    def model_peers(self) -> list[str]:
        """Peers whose own problem is not period-separable steps (a budget couples
        their periods, or a participant: curves, storage, loads, devices): solved as a
        model, alone or in ADMM."""
        coupled = set(self.budgets["participant"]) | set(self.participants)
        return [p for p in self.peers if p in coupled]


def trading_graph(
    peers: Sequence[str],
    graph: str | Sequence[Sequence[str]] = "complete",
    *,
    bus: dict[str, Any] | None = None,
    feeder: Any = None,
) -> list[tuple[str, str]]:
    """The undirected trading edges among peers.

    Parameters
    ----------
    peers : peer ids.
    graph : ``"complete"`` (every pair), ``"neighbours"`` (peers at the same bus or at
        buses joined by a branch of ``feeder``), or a list of ``[peer, peer]`` pairs.
    bus : bus per peer (for ``"neighbours"``).
    feeder : the feeder (for ``"neighbours"``).

    Returns
    -------
    Sorted list of pairs ``(a, b)`` with ``a < b``.
    """
    if isinstance(graph, str):
        if graph == "complete":
            return list(itertools.combinations(sorted(peers), 2))
        if graph == "neighbours":
            return _neighbours(peers, bus or {}, feeder)
        raise InputError(f"graph: {graph!r} is not 'complete', 'neighbours' or a list of pairs")
    known, edges = set(peers), set()
    for k, pair in enumerate(graph):
        if len(pair) != 2 or pair[0] == pair[1]:
            raise InputError(f"graph[{k}]: {list(pair)!r} is not a pair of two peers")
        for peer in pair:
            if peer not in known:
                raise InputError(f"graph[{k}]: {peer!r} is not a peer")
        edges.add(tuple(sorted(pair)))
    return sorted(edges)


def _neighbours(peers, bus: dict, feeder) -> list[tuple[str, str]]:
    if feeder is None or any(bus.get(p) is None for p in peers):
        raise InputError("graph 'neighbours' needs a feeder and a bus for every peer")
    at = {p: feeder.merged.get(bus[p], bus[p]) for p in peers}
    adjacent = set(zip(feeder.branches["from_bus"], feeder.branches["to_bus"], strict=True))
    return [
        (a, b)
        for a, b in itertools.combinations(sorted(peers), 2)
        if at[a] == at[b] or (at[a], at[b]) in adjacent or (at[b], at[a]) in adjacent
    ]


def hop_costs(
    bus: dict[str, Any], feeder: Any, per_hop: float, pairs: Sequence[tuple[str, str]]
) -> pd.DataFrame:
    """Distance preferences: ``per_hop`` currency/MWh per branch between two peers' buses.

    Returns a preferences table (peer, partner, cost) for both directions of each pair.
    """
    rows = []
    for a, b in pairs:
        path_a = feeder.path_to_root(feeder.merged.get(bus[a], bus[a]))
        path_b = feeder.path_to_root(feeder.merged.get(bus[b], bus[b]))
        hops = len(set(path_a) ^ set(path_b))
        rows += [(a, b, per_hop * hops), (b, a, per_hop * hops)]
    return pd.DataFrame(rows, columns=["peer", "partner", "cost"])


def prepare(
    bids: pd.DataFrame,
    *,
    architecture: Architecture = "full",
    graph: str | Sequence[Sequence[str]] = "complete",
    communities: dict[str, str] | None = None,
    preferences: pd.DataFrame | None = None,
    boundary_costs: pd.DataFrame | None = None,
    upstream: Upstream | None = None,
    network: Any = None,
    period_hours: float = 1.0,
    quadratic: float = 0.0,
    budgets: pd.DataFrame | None = None,
    participants: Sequence[Participant] = (),
    periods: Sequence[int] | None = None,
) -> Market:
    """Check the inputs and gather them as a :class:`Market` (see :func:`build`)."""
    table = prepare_bids(pd.DataFrame(columns=BID_COLUMNS[:4]) if bids is None else bids)
    table["participant"] = table["participant"].astype(str)
    specs = _participants_by_peer(participants)
    peers = list(dict.fromkeys([*table["participant"], *specs]))
    bus = _peer_buses(table, specs)
    community = {p: (communities or {}).get(p) for p in peers}
    if architecture not in ("full", "community", "hybrid"):
        raise InputError(f"architecture: {architecture!r} is not full, community or hybrid")
    if quadratic < 0:
        raise InputError(f"quadratic: {quadratic} is negative")
    periods = sorted(set(table["period"]) | set(periods or [])) or [0]
    if upstream is not None:
        imp, exp = upstream.per_period(periods)
        if np.any(exp > imp):
            raise InputError("upstream: export_price above import_price (unbounded arbitrage)")
    edges = (
        [] if architecture == "community" else trading_graph(peers, graph, bus=bus, feeder=network)
    )
    managers: list[str] = []
    if architecture != "full":
        edges, managers = _with_managers(edges, peers, community)
    pairs = [e for a, b in edges for e in ((a, b), (b, a))]
    community_of = {**community, **{m: m.removeprefix(MANAGER_PREFIX) for m in managers}}
    sell_cost, buy_cost = _pair_costs(pairs, periods, preferences, community_of, boundary_costs)
    return Market(
        bids=table,
        peers=peers,
        managers=managers,
        periods=periods,
        pairs=pairs,
        sell_cost=sell_cost,
        buy_cost=buy_cost,
        bus=bus,
        community=community,
        upstream=upstream,
        feeder=network,
        period_hours=period_hours,
        quadratic=quadratic,
        architecture=architecture,
        budgets=_prepare_budgets(budgets, table, periods),
        participants=specs,
    )


def _participants_by_peer(participants: Sequence[Participant]) -> dict[str, Participant]:
    specs: dict[str, Participant] = {}
    for k, spec in enumerate(participants):
        if spec.participant in specs:
            raise InputError(f"participants[{k}]: {spec.participant!r} is stated twice")
        specs[spec.participant] = spec
    return specs


BUDGET_COLUMNS = ["participant", "side", "first_period", "last_period", "min_kwh", "max_kwh"]


def _prepare_budgets(budgets: pd.DataFrame | None, bids: pd.DataFrame, periods: list[int]):
    """Check an energy budgets table (see :func:`build`) against the bids it bounds;
    ``side`` defaults to buy and a missing bound to none (NaN)."""
    if budgets is None or len(budgets) == 0:
        return pd.DataFrame(columns=BUDGET_COLUMNS)
    unknown = set(budgets.columns) - set(BUDGET_COLUMNS)
    missing = {"participant", "first_period", "last_period"} - set(budgets.columns)
    if unknown or missing:
        raise InputError(
            f"budgets: unknown column(s) {sorted(unknown)}, missing column(s) {sorted(missing)}"
        )
    table = budgets.reset_index(drop=True).reindex(columns=BUDGET_COLUMNS)
    table["side"] = table["side"].fillna("buy")
    table[["min_kwh", "max_kwh"]] = table[["min_kwh", "max_kwh"]].astype(float)
    for k, row in table.iterrows():
        where = f"budgets row {k}"
        if row["side"] not in ("buy", "sell"):
            raise InputError(f"{where}: side {row['side']!r} is not buy or sell")
        own = (bids["participant"] == row["participant"]) & (bids["side"] == row["side"])
        if not own.any():
            raise InputError(
                f"{where}: participant {row['participant']!r} has no {row['side']} blocks"
            )
        for name in ("first_period", "last_period"):
            if row[name] not in periods:
                raise InputError(f"{where}: {name} {row[name]!r} is not a period of the bids")
        if row["first_period"] > row["last_period"]:
            raise InputError(f"{where}: first_period is after last_period")
        low, high = row["min_kwh"], row["max_kwh"]
        if np.isnan(low) and np.isnan(high):
            raise InputError(f"{where}: neither min_kwh nor max_kwh is given")
        if low < 0 or high < 0 or low > high:
            raise InputError(f"{where}: min_kwh {low:g}, max_kwh {high:g}: need 0 <= min <= max")
    return table


def _peer_buses(table: pd.DataFrame, specs: dict[str, Participant]) -> dict[str, Any]:
    """The bus of every peer: all its blocks and its participant are at one bus (None
    without a network)."""
    buses = table.groupby("participant", sort=False)["bus"].unique()
    several = buses[buses.map(len) > 1]
    if len(several):
        peer, found = several.index[0], sorted(map(str, several.iloc[0]))
        raise InputError(
            f"bids: peer {peer!r} has blocks at buses {', '.join(found)}; one bus a peer"
        )
    bus = buses.map(lambda b: b[0]).to_dict()
    for peer, spec in specs.items():
        if peer in bus and bus[peer] != spec.bus:
            raise InputError(
                f"participants: {peer!r} is at bus {spec.bus}, its blocks at bus {bus[peer]}"
            )
        bus[peer] = spec.bus
    return bus


def _with_managers(edges, peers, community) -> tuple[list, list[str]]:
    missing = [p for p in peers if community[p] is None]
    if missing:
        raise InputError(f"communities: peer {missing[0]!r} has no community")
    managers = sorted({MANAGER_PREFIX + str(c) for c in community.values()})
    links = [(p, MANAGER_PREFIX + str(community[p])) for p in peers]
    return [*edges, *links, *itertools.combinations(managers, 2)], managers


def _pair_costs(
    market_pairs: list[tuple[str, str]],
    periods: list[int],
    preferences: pd.DataFrame | None,
    community_of: dict[str, Any],
    boundary_costs: pd.DataFrame | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sell and buy cost of every ordered pair and period (currency/MWh): the pair's
    preference cost on both sides plus, when the pair crosses a community boundary,
    the export cost (selling) and import cost (buying) of the owner's community."""
    preference = _preference_costs(market_pairs, periods, preferences)
    export, imports = _boundary_costs(market_pairs, community_of, boundary_costs)
    return preference + export[:, None], preference + imports[:, None]


def _preference_costs(pairs, periods, preferences: pd.DataFrame | None) -> np.ndarray:
    """(pairs x periods) preference costs: a row with a ``period`` sets that period, a
    row without one (no column, or empty) every period no row of its own sets."""
    cost = np.zeros((len(pairs), len(periods)))
    if preferences is None or len(preferences) == 0:
        return cost
    missing = {"peer", "partner", "cost"} - set(preferences.columns)
    if missing:
        raise InputError(f"preferences: missing column(s) {sorted(missing)}")
    unknown = set(preferences.columns) - {"peer", "partner", "cost", "period"}
    if unknown:
        raise InputError(f"preferences: unknown column(s) {sorted(unknown)}")
    row_of, column_of = {p: k for k, p in enumerate(pairs)}, {t: k for k, t in enumerate(periods)}
    table = preferences.reset_index(drop=True)
    period = table["period"] if "period" in table else pd.Series(np.nan, index=table.index)
    seen: dict[tuple, int] = {}
    for k, row in table.iterrows():
        key = (str(row["peer"]), str(row["partner"]))
        if key not in row_of:
            raise InputError(f"preferences row {k}: {key[0]!r} does not trade with {key[1]!r}")
        if not (np.isfinite(row["cost"]) and row["cost"] >= 0):
            raise InputError(f"preferences row {k}: cost {plain(row['cost'])} must be >= 0")
        t = None if pd.isna(period[k]) else float(period[k])
        if t is not None and t not in column_of:
            raise InputError(f"preferences row {k}: period {t:g} is not a period of the bids")
        t = None if t is None else int(t)
        if (key, t) in seen:
            raise InputError(
                f"preferences row {k}: repeats row {seen[key, t]} ({key[0]}, "
                f"{key[1]}, period {'all' if t is None else t})"
            )
        seen[key, t] = k
    for (key, t), k in sorted(seen.items(), key=lambda item: item[0][1] is not None):
        columns = slice(None) if t is None else column_of[t]
        cost[row_of[key], columns] = float(table.at[k, "cost"])
    return cost


def _boundary_costs(pairs, community_of: dict[str, Any], boundary_costs: pd.DataFrame | None):
    """Per ordered pair: the owner's export and import cost when the partner is of
    another community (currency/MWh), else 0."""
    export, imports = np.zeros(len(pairs)), np.zeros(len(pairs))
    if boundary_costs is None or len(boundary_costs) == 0:
        return export, imports
    columns = {"community", "import_cost", "export_cost"}
    if set(boundary_costs.columns) != columns:
        raise InputError(
            f"boundary_costs: columns {sorted(boundary_costs.columns)}, expected {sorted(columns)}"
        )
    table = boundary_costs.reset_index(drop=True)
    known = {c for c in community_of.values() if c is not None}
    for k, row in table.iterrows():
        if row["community"] not in known:
            raise InputError(f"boundary_costs row {k}: {row['community']!r} is not a community")
        for name in ("import_cost", "export_cost"):
            if not (np.isfinite(row[name]) and row[name] >= 0):
                raise InputError(f"boundary_costs row {k}: {name} {row[name]!r} must be >= 0")
    repeated = table["community"].duplicated()
    if repeated.any():
        raise InputError(f"boundary_costs row {int(repeated.idxmax())}: community repeated")
    costs = table.set_index("community")
    for p, (i, j) in enumerate(pairs):
        mine, theirs = community_of.get(i), community_of.get(j)
        if mine is None or theirs is None:
            raise InputError(f"boundary_costs: {(i if mine is None else j)!r} has no community")
        if mine != theirs and mine in costs.index:
            export[p], imports[p] = costs.at[mine, "export_cost"], costs.at[mine, "import_cost"]
    return export, imports


# --- the central LP -------------------------------------------------------------------


def build(
    bids: pd.DataFrame,
    *,
    architecture: Architecture = "full",
    graph: str | Sequence[Sequence[str]] = "complete",
    communities: dict[str, str] | None = None,
    preferences: pd.DataFrame | None = None,
    boundary_costs: pd.DataFrame | None = None,
    upstream: Upstream | None = None,
    network: Any = None,
    formulation: Any = None,
    period_hours: float = 1.0,
    quadratic: float = 0.0,
    budgets: pd.DataFrame | None = None,
    participants: Sequence[Participant] = (),
    periods: Sequence[int] | None = None,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
) -> pyo.ConcreteModel:
    """Build the central P2P clearing as a Pyomo model (see the module docstring).

    Parameters
    ----------
    bids : the LEM bids table; ``participant`` is the peer, ``bus`` its bus.
    architecture : ``"full"``, ``"community"`` or ``"hybrid"``.
    graph : ``"complete"``, ``"neighbours"`` or a list of peer pairs.
    communities : community per peer (``community`` and ``hybrid``).
    preferences : table peer, partner, cost (currency/MWh, >= 0) per ordered pair,
        optionally with a ``period``: a row with a period sets the pair's cost in that
        period, a row without one in every other period.
    boundary_costs : table community, import_cost, export_cost (currency/MWh, >= 0):
        what an agent of the community (a peer or its manager) pays per MWh it buys
        from / sells to an agent of another community, on top of its preference cost
        (trades with the upstream grid pay the tariffs only).
    upstream : import/export tariffs; ``capacity_kw`` bounds each peer's import and
        export. None: no grid.
    network : a Feeder: the peers' injections meet its network formulation (LinDistFlow
        by default); None: CopperPlate.
    formulation : the network formulation (see :func:`gridmarkets.networks.attach_grid`);
        it must be lossless.
    period_hours : length of a period (h).
    quadratic : gamma of the tie-breaking term ((currency/MWh)/kW); > 0 makes a QP.
    budgets : energy budgets coupling a peer's periods: table participant, side
        (``buy``, the default: the energy its buy blocks take; ``sell``: the energy its
        sell blocks give), first_period, last_period (the window, inclusive), min_kwh,
        max_kwh (either may be missing: no bound).
    participants : peers stated in the vocabulary of
        :mod:`gridmarkets.models.participants` (quadratic curves with p_min/p_max,
        storage, flexible loads with an energy budget, devices), each the peer named
        by its ``participant`` (which may also have blocks, at the same bus).
    periods : the market's periods (default: those of the bids); needed when the
        peers are participants only.
    extra : called with the model before it is returned, to add user constraints.

    Returns
    -------
    pyomo ConcreteModel with ``m.market`` (the :class:`Market`), ``m.network`` and
    ``m.handles`` (the grid's components, :class:`~gridmarkets.networks.NetworkHandles`).
    """
    started = time.perf_counter()
    market = prepare(
        bids,
        architecture=architecture,
        graph=graph,
        communities=communities,
        preferences=preferences,
        boundary_costs=boundary_costs,
        upstream=upstream,
        network=network,
        period_hours=period_hours,
        quadratic=quadratic,
        budgets=budgets,
        participants=participants,
        periods=periods,
    )
    m = pyo.ConcreteModel(name="p2p")
    m.market = market
    _add_own(m, market)
    _add_trades(m, market)
    _add_balances(m, market)
    _add_network(m, market, formulation)
    _add_welfare(m, market)
    _scale_quadratic(m, market)
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def _add_own(m, market: Market) -> None:
    """The agents' own decisions: blocks, participants, grid trade, budgets, ``net_kw``."""
    _add_sets(m, market)
    _add_blocks(m, market)
    _add_participants(m, market)
    _add_upstream(m, market)
    _add_net(m, market)
    _add_budgets(m, market)


def _add_sets(m, market: Market) -> None:
    m.PEERS = pyo.Set(initialize=market.peers, doc="peers")
    m.AGENTS = pyo.Set(initialize=market.agents, doc="peers and community managers")
    m.PERIODS = pyo.Set(initialize=market.periods, doc="market periods")
    m.BIDS = pyo.Set(initialize=market.bids.index.tolist(), doc="bid and offer blocks")
    m.PAIRS = pyo.Set(initialize=market.pairs, dimen=2, doc="ordered trading pairs (i, j)")
    m.EDGES = pyo.Set(initialize=market.edges, dimen=2, doc="trading edges, once each")


def _add_blocks(m, market: Market) -> None:
    quantity = market.bids["quantity_kw"].to_dict()
    m.accepted_kw = pyo.Var(
        m.BIDS,
        bounds=lambda m, b: (0, quantity[b]),
        doc="accepted quantity of block b: 0 <= q[b] <= quantity_kw[b]  (kW)",
    )


def _add_participants(m, market: Market) -> None:
    """Every participant's own model (:func:`~gridmarkets.models.participants.
    add_participant`) in its block, its net injection copied into one variable per
    period (what the balances and the grid read) and its welfare."""
    m.PARTICIPANTS = pyo.Set(initialize=list(market.participants), doc="participant peers")
    m.participant = pyo.Block(m.PARTICIPANTS, doc="a participant's own model")
    handles = {
        name: add_participant(m.participant[name], spec, market.periods, market.period_hours)
        for name, spec in market.participants.items()
    }
    m.participant_kw = pyo.Var(
        m.PARTICIPANTS, m.PERIODS, doc="participant's net injection, into its bus  (kW)"
    )
    m.participant_injection = pyo.Constraint(
        m.PARTICIPANTS,
        m.PERIODS,
        rule=lambda m, i, t: m.participant_kw[i, t] == handles[i][0][t],
        doc="participant_kw[i,t] = p_net[i,t] of its own model  (kW)",
    )
    m.participant_welfare = pyo.Expression(
        m.PARTICIPANTS,
        rule=lambda m, i: handles[i][1],
        doc="utility minus cost of the participant's schedule  (currency)",
    )


def _add_upstream(m, market: Market) -> None:
    if market.upstream is None:
        return
    cap = market.upstream.capacity_kw
    m.import_kw = pyo.Var(
        m.PEERS, m.PERIODS, bounds=(0, cap), doc="0 <= import[i,t] <= capacity_kw  (kW)"
    )
    m.export_kw = pyo.Var(
        m.PEERS, m.PERIODS, bounds=(0, cap), doc="0 <= export[i,t] <= capacity_kw  (kW)"
    )


def _add_trades(m, market: Market) -> None:
    m.sell_kw = pyo.Var(
        m.PAIRS, m.PERIODS, bounds=(0, None), doc="what i sells to j, i's side: >= 0  (kW)"
    )
    m.buy_kw = pyo.Var(
        m.PAIRS, m.PERIODS, bounds=(0, None), doc="what i buys from j, i's side: >= 0  (kW)"
    )
    m.trade_kw = pyo.Expression(
        m.PAIRS,
        m.PERIODS,
        rule=lambda m, i, j, t: m.sell_kw[i, j, t] - m.buy_kw[i, j, t],
        doc="trade[i,j,t] = sell[i,j,t] - buy[i,j,t]: net sold by i to j  (kW)",
    )
    m.reciprocity = pyo.Constraint(
        m.EDGES,
        m.PERIODS,
        rule=lambda m, i, j, t: m.trade_kw[i, j, t] + m.trade_kw[j, i, t] == 0,
        doc="trade[i,j,t] + trade[j,i,t] = 0  (kW); dual: bilateral price of (i, j)",
    )


def _add_net(m, market: Market) -> None:
    table = market.bids
    sign = np.where(table["side"] == "sell", 1.0, -1.0)
    blocks: dict[tuple, list] = {}
    for b, peer, t, s in zip(table.index, table["participant"], table["period"], sign, strict=True):
        blocks.setdefault((peer, t), []).append(s * m.accepted_kw[b])
    for i in market.participants:
        for t in market.periods:
            blocks.setdefault((i, t), []).append(m.participant_kw[i, t])
    m.net_kw = pyo.Expression(
        m.AGENTS,
        m.PERIODS,
        rule=lambda m, i, t: sum(blocks.get((i, t), [])),
        doc="net[i,t] = sum_sell q - sum_buy q + participant_kw[i,t]: the agent's own "
        "injection  (kW)",
    )


def _add_budgets(m, market: Market) -> None:
    table, bids = market.budgets, market.bids
    in_window = {
        k: bids.index[
            (bids["participant"] == row.participant)
            & (bids["side"] == row.side)
            & bids["period"].between(row.first_period, row.last_period)
        ]
        for k, row in zip(table.index, table.itertuples(), strict=True)
    }
    m.BUDGETS = pyo.Set(initialize=table.index.tolist(), doc="energy budgets")
    m.budget_energy_kwh = pyo.Expression(
        m.BUDGETS,
        rule=lambda m, k: market.period_hours * sum(m.accepted_kw[b] for b in in_window[k]),
        doc="E[k] = dt sum_(t in window, b of the side) q[b,t]  (kWh)",
    )
    m.energy_budget_max = pyo.Constraint(
        [k for k in table.index if not np.isnan(table.at[k, "max_kwh"])],
        rule=lambda m, k: m.budget_energy_kwh[k] <= table.at[k, "max_kwh"],
        doc="E[k] <= max_kwh[k]  (kWh)",
    )
    m.energy_budget_min = pyo.Constraint(
        [k for k in table.index if not np.isnan(table.at[k, "min_kwh"])],
        rule=lambda m, k: m.budget_energy_kwh[k] >= table.at[k, "min_kwh"],
        doc="E[k] >= min_kwh[k]  (kWh)",
    )


def _grid_kw(m, market: Market, i: str, t) -> Any:
    """What agent i takes from the upstream grid in period t (kW; 0 for managers)."""
    if market.upstream is None or i not in market.peers:
        return 0
    return m.import_kw[i, t] - m.export_kw[i, t]


def _add_balances(m, market: Market) -> None:
    partners: dict[str, list[str]] = {a: [] for a in market.agents}
    for i, j in market.pairs:
        partners[i].append(j)

    def balance(m, i, t):
        sold = sum(m.trade_kw[i, j, t] for j in partners[i])
        return m.net_kw[i, t] + _grid_kw(m, market, i, t) - sold == 0

    m.energy_balance = pyo.Constraint(
        m.AGENTS,
        m.PERIODS,
        rule=balance,
        doc="net[i,t] + import[i,t] - export[i,t] - sum_j trade[i,j,t] = 0  (kW); "
        "dual: the agent's marginal value of energy",
    )


def _add_network(m, market: Market, formulation) -> None:
    """Attach the peers' injections to the grid (LinDistFlow on a feeder, else CopperPlate).

    The upstream grid injects ``upstream_kw[t]`` at the root, a free variable: the
    agents' balances and reciprocity already make it equal the peers' grid trade
    ``sum_i import - export``, so the root is the slack bus and its nodal price is 0.
    """
    from gridmarkets.networks import attach_grid

    if getattr(formulation, "losses", False):
        raise InputError(
            "formulation: P2P clears lossless networks only (no party of the market buys "
            "the losses); use a formulation without losses"
        )
    m.upstream_kw = pyo.Var(
        m.PERIODS,
        doc="exchange with the upstream grid at the root, into the feeder (kW); free: "
        "the balances make it sum_i import[i,t] - export[i,t]",
    )
    attach_grid(
        m,
        market.feeder,
        market.periods,
        injections_terms(m, market),
        formulation=formulation,
        period_hours=market.period_hours,
    )


def injections_terms(m, market: Market) -> pd.DataFrame:
    """The market's long injection table in term form (owner, bus, period, variable,
    p_coef, q_coef): every block injects ``+-accepted_kw`` kW (sell +, buy -) and its
    reactive ratio times that in kvar (:func:`~gridmarkets.models.lem.reactive_ratio`),
    every participant its ``participant_kw`` (unity power factor); the upstream grid
    injects ``upstream_kw`` at the root."""
    table = market.bids
    sign = np.where(table["side"] == "sell", 1.0, -1.0)
    blocks = pd.DataFrame(
        {
            "owner": table["participant"],
            "bus": table["bus"],
            "period": table["period"],
            "variable": [m.accepted_kw[b] for b in table.index],
            "p_coef": sign,
            "q_coef": sign * reactive_ratio(table),
        }
    )
    names = list(market.participants)
    participants = pd.DataFrame(
        {
            "owner": np.repeat(names, len(market.periods)),
            "bus": np.repeat([market.bus[i] for i in names], len(market.periods)),
            "period": np.tile(market.periods, len(names)),
            "variable": [m.participant_kw[i, t] for i in names for t in market.periods],
            "p_coef": 1.0,
            "q_coef": 0.0,
        }
    )
    root = None if market.feeder is None else market.feeder.root
    upstream = pd.DataFrame(
        {
            "owner": UPSTREAM,
            "bus": [root] * len(market.periods),
            "period": market.periods,
            "variable": [m.upstream_kw[t] for t in market.periods],
            "p_coef": 1.0,
            "q_coef": 0.0,
        }
    )
    frames = [blocks, participants, upstream] if names else [blocks, upstream]
    return pd.concat(frames, ignore_index=True)


def own_welfare(m, market: Market) -> Any:
    """The agents' own welfare (currency): the value of their accepted bids minus the
    cost of their offers, their participants' welfare, and their grid trade at the
    tariffs."""
    per_kw = market.period_hours / 1000.0
    table = market.bids
    value = np.where(table["side"] == "buy", 1.0, -1.0) * table["price"].to_numpy() * per_kw
    welfare = sum(v * m.accepted_kw[b] for v, b in zip(value, table.index, strict=True))
    welfare += sum(m.participant_welfare[i] for i in market.participants)
    if market.upstream is not None:
        imp, exp = market.tariffs()
        welfare += sum(
            per_kw * (exp[k] * m.export_kw[i, t] - imp[k] * m.import_kw[i, t])
            for i in market.peers
            for k, t in enumerate(market.periods)
        )
    return welfare


def _scale_quadratic(m: pyo.Block, market: Market) -> None:
    """A quadratic welfare is solved per MWh and with its smallest curvature (the
    curves' 2 a, the trades' gamma) at least 1 (:func:`~gridmarkets.models.participants.
    objective_scale`; HiGHS's QP solver cycles on curvatures ~1e-5 in currency). An LP
    is solved as stated."""
    a = np.append(curvatures(list(market.participants.values())), market.quadratic / 2)
    if (a > 0).any():
        scale_objective_by(m, objective_scale(a, market.period_hours))


def own_model(
    market: Market, agent: str, node_price: np.ndarray | None = None
) -> tuple[pyo.ConcreteModel, list, Any]:
    """One agent's own decisions alone, built as in the central model.

    ``node_price`` (per period, currency/MWh) is added to its tariffs. Returns the model
    (no objective), what it injects into its trades per period (kW: own net plus grid
    trade) and its own welfare (currency).
    """
    upstream = market.upstream
    if upstream is not None and node_price is not None:
        imp, exp = market.tariffs()
        upstream = Upstream(imp + node_price, exp + node_price, upstream.capacity_kw)
    n_t = len(market.periods)
    own = dataclasses.replace(
        market,
        bids=market.bids[market.bids["participant"] == agent],
        peers=[agent] if agent in market.peers else [],
        managers=[agent] if agent in market.managers else [],
        pairs=[],
        sell_cost=np.zeros((0, n_t)),
        buy_cost=np.zeros((0, n_t)),
        budgets=market.budgets[market.budgets["participant"] == agent],
        participants={k: v for k, v in market.participants.items() if k == agent},
        upstream=upstream,
        feeder=None,
    )
    m = pyo.ConcreteModel(name=f"p2p agent {agent}")
    m.market = own
    _add_own(m, own)
    injection = [m.net_kw[agent, t] + _grid_kw(m, own, agent, t) for t in own.periods]
    return m, injection, own_welfare(m, own)


def _add_welfare(m, market: Market) -> None:
    per_kw = market.period_hours / 1000.0
    sell, buy = market.sell_cost, market.buy_cost
    welfare = own_welfare(m, market)
    welfare -= sum(
        per_kw * (sell[p, k] * m.sell_kw[i, j, t] + buy[p, k] * m.buy_kw[i, j, t])
        for p, (i, j) in enumerate(market.pairs)
        for k, t in enumerate(market.periods)
        if sell[p, k] > 0 or buy[p, k] > 0
    )
    if market.quadratic > 0:
        welfare -= sum(
            per_kw * market.quadratic / 2 * (m.sell_kw[i, j, t] ** 2 + m.buy_kw[i, j, t] ** 2)
            for i, j in market.pairs
            for t in market.periods
        )
    m.social_welfare = pyo.Objective(
        expr=welfare,
        sense=pyo.maximize,
        doc="sum_buy price q dt - sum_sell price q dt - import cost + export revenue "
        "- sum (sell_cost_ijt sell + buy_cost_ijt buy) dt - gamma/2 (sell^2 + buy^2) dt  "
        "(currency)",
    )


# --- outcomes, settlement and result tables -------------------------------------------


@dataclass
class Outcome:
    """A cleared market's values, from the LP or from ADMM.

    Attributes
    ----------
    accepted_kw : per bids row.
    import_kw, export_kw : (peers x periods).
    trade_kw : (pairs x periods): what ``pairs[p][0]`` sells to ``pairs[p][1]``, as its
        seller reports it.
    price : (pairs x periods) bilateral price of the pair (currency/MWh), at the root.
    balance_price : (agents x periods) each agent's marginal value of energy at the
        root (currency/MWh).
    node_price : (agents x periods) the nodal price of each agent's bus (currency/MWh):
        0 at the root, without a network and for community managers (at the root).
    network_rent : what the nodal prices collect from the injections the grid carries,
        ``-sum_(b,t) node_price[b,t] p[b,t] dt`` (currency): the DSO's receipts.
    budget_value : per budget, the welfare one more MWh of budget brings
        (currency/MWh; both bounds moved together; 0 where neither binds).
    participant_kw, participant_welfare : (participants x periods) net injections
        (kW) and (participants,) welfare (currency) of the participant peers.
    """

    accepted_kw: np.ndarray
    import_kw: np.ndarray
    export_kw: np.ndarray
    trade_kw: np.ndarray
    price: np.ndarray
    balance_price: np.ndarray
    node_price: np.ndarray
    network_rent: float = 0.0
    budget_value: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    participant_kw: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    participant_welfare: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


def central_outcome(m: pyo.ConcreteModel, solution: Solution) -> Outcome:
    """Read an :class:`Outcome` from a solved central model (prices from the duals)."""
    market: Market = m.market
    periods = market.periods
    per_mwh = 1000.0 / market.period_hours
    accepted = np.array([pyo.value(m.accepted_kw[b]) for b in market.bids.index])

    def per_peer(var) -> np.ndarray:
        return np.array([[pyo.value(var[i, t]) for t in periods] for i in market.peers])

    imp = exp = np.zeros((len(market.peers), len(periods)))
    if market.upstream is not None:
        imp, exp = per_peer(m.import_kw), per_peer(m.export_kw)
    trade = np.array(
        [
            [m.sell_kw[i, j, t].value - m.buy_kw[i, j, t].value for t in periods]
            for i, j in market.pairs
        ]
    )
    edge_price = {
        (i, j): [per_mwh * solution.dual(m.reciprocity[i, j, t]) for t in periods]
        for i, j in market.edges
    }
    price = np.array([edge_price.get((i, j), edge_price.get((j, i))) for i, j in market.pairs])
    balance = np.array(
        [[per_mwh * solution.dual(m.energy_balance[a, t]) for t in periods] for a in market.agents]
    )
    shape = (len(market.pairs), len(periods))
    return Outcome(
        accepted,
        imp,
        exp,
        trade.reshape(shape),
        price.reshape(shape),
        balance.reshape(len(market.agents), len(periods)),
        *_node_prices(m, solution),
        budget_value=budget_values(m, solution, scale=1000.0),
        **participant_values(m),
    )


def participant_values(m: pyo.Block) -> dict[str, np.ndarray]:
    """The solved participants' ``participant_kw`` and ``participant_welfare`` of ``m``."""
    names, periods = list(m.market.participants), m.market.periods
    kw = [[m.participant_kw[i, t].value for t in periods] for i in names]
    return {
        "participant_kw": np.array(kw, dtype=float).reshape(len(names), len(periods)),
        "participant_welfare": np.array([pyo.value(m.participant_welfare[i]) for i in names]),
    }


def budget_values(m: pyo.Block, solution: Solution, scale: float) -> np.ndarray:
    """Per budget of ``m``, minus the duals of its bounds times ``scale`` (from the
    objective's units per kWh to welfare per MWh of budget, currency/MWh)."""
    table = m.market.budgets
    dual = pd.Series(0.0, index=table.index)
    for family in (m.energy_budget_max, m.energy_budget_min):
        if len(family):
            dual = dual.add(solution.dual(family), fill_value=0.0)
    return 0.0 - scale * dual.to_numpy()  # 0.0 -: no -0.0 where nothing binds


def budgets_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """The energy budgets with the energy used (kWh), whether a bound binds, and the
    welfare one more MWh of budget brings (``value_per_mwh``, currency/MWh)."""
    table = market.budgets.copy()
    bids = market.bids
    energy = []
    for row in table.itertuples():
        rows = (
            (bids["participant"] == row.participant)
            & (bids["side"] == row.side)
            & bids["period"].between(row.first_period, row.last_period)
        ).to_numpy()
        energy.append(float(outcome.accepted_kw[rows].sum()) * market.period_hours)
    table["energy_kwh"] = energy
    tol = 1e-6 * np.maximum(1.0, table["energy_kwh"].abs())
    at_bound = ((table["energy_kwh"] - table["max_kwh"]).abs() <= tol) | (
        (table["energy_kwh"] - table["min_kwh"]).abs() <= tol
    )
    table["binding"] = at_bound & (np.abs(outcome.budget_value) > 1e-9)
    table["value_per_mwh"] = outcome.budget_value
    return table


def _node_prices(m: pyo.ConcreteModel, solution: Solution) -> tuple[np.ndarray, float]:
    """The nodal price at every agent's bus (agents x periods; managers 0, at the root)
    and the DSO's receipts ``-sum_(b,t) price[b,t] p[b,t] dt`` (currency), both from
    :func:`gridmarkets.networks.nodal_prices` and the placed injection table."""
    from gridmarkets.networks import nodal_prices

    market: Market = m.market
    n_t, placed = len(market.periods), m.handles.injections
    price_at = _price_lookup(nodal_prices(m.handles, solution), market.feeder)
    bus = placed.groupby("owner")["bus"].first().reindex(market.peers).to_numpy()
    node = np.zeros((len(market.agents), n_t))
    node[: len(bus)] = price_at(np.repeat(bus, n_t), market.periods * len(bus)).reshape(-1, n_t)
    injected_kw = placed["p_coef"].to_numpy() * np.array([v.value for v in placed["variable"]])
    rent = -float(price_at(placed["bus"], placed["period"]) @ injected_kw)
    return node, rent * market.period_hours / 1000.0


def _price_lookup(nodal: pd.DataFrame, feeder) -> Callable[[Sequence, Sequence], np.ndarray]:
    """``price_at(buses, periods)``: the nodal prices at those (bus, period) keys."""
    if feeder is None:
        per_period = nodal.groupby("period")["price"].first()
        return lambda bus, period: per_period.reindex(list(period)).to_numpy(float)
    table = nodal.set_index(["bus", "period"])["price"]
    return lambda bus, period: table.reindex(
        pd.MultiIndex.from_arrays([list(bus), list(period)])
    ).to_numpy(float)


def trades_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """One row per trade, settled at both ends' nodal prices (see the module docstring).

    ``sold_kw`` is what the seller reports selling, ``bought_kw`` what the buyer reports
    buying; reciprocity makes them equal. ``price`` is the bilateral price (the
    reciprocity dual); the seller is paid ``seller_price`` = price + its node's price
    and the buyer pays ``buyer_price`` = price + its node's price (currency/MWh); the
    difference, ``network_charge``, goes to the DSO. ``payment`` is what the buyer pays
    and ``network_payment`` the DSO's part of it (currency).
    """
    position = {pair: k for k, pair in enumerate(market.pairs)}
    agent = {a: k for k, a in enumerate(market.agents)}
    node = outcome.node_price
    rows = []
    for p, (i, j) in enumerate(market.pairs):
        back = position[(j, i)]
        for k, t in enumerate(market.periods):
            sold = outcome.trade_kw[p, k]
            if sold > _TOL_KW:
                price, bought = outcome.price[p, k], -outcome.trade_kw[back, k]
                at_ends = (price + node[agent[i], k], price + node[agent[j], k])
                rows.append((i, j, t, sold, sold, bought, price, *at_ends))
    columns = ["seller", "buyer", "period", "traded_kw", "sold_kw", "bought_kw", "price"]
    table = pd.DataFrame(rows, columns=[*columns, "seller_price", "buyer_price"])
    table["network_charge"] = table["buyer_price"] - table["seller_price"]
    table["energy_kwh"] = table["traded_kw"] * market.period_hours
    table["payment"] = table["energy_kwh"] * table["buyer_price"] / 1000.0
    table["network_payment"] = table["energy_kwh"] * table["network_charge"] / 1000.0
    table["seller_bus"] = table["seller"].map(market.bus)
    table["buyer_bus"] = table["buyer"].map(market.bus)
    return table


def pair_prices_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """The bilateral prices every agent faces, traded or not: one row per ordered pair
    and period with ``price`` = the pair's price + the agent's node price (currency/MWh;
    what the agent is paid per MWh it sells to ``partner``, or pays per MWh it buys),
    ``sell_cost`` and ``buy_cost`` (what it pays per MWh it sells to / buys from
    ``partner`` on top of the price: preference and boundary costs, currency/MWh) and
    ``trade_kw`` (what it sells, negative: buys)."""
    agent = {a: k for k, a in enumerate(market.agents)}
    owner = np.array([agent[i] for i, _ in market.pairs], dtype=int)
    n_t = len(market.periods)
    return pd.DataFrame(
        {
            "peer": np.repeat([i for i, _ in market.pairs], n_t),
            "partner": np.repeat([j for _, j in market.pairs], n_t),
            "period": np.tile(market.periods, len(market.pairs)),
            "price": (outcome.price + outcome.node_price[owner]).ravel(),
            "sell_cost": market.sell_cost.ravel(),
            "buy_cost": market.buy_cost.ravel(),
            "trade_kw": outcome.trade_kw.ravel(),
        }
    )


def grid_prices_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """Each peer's prices at its node (currency/MWh): ``node_price`` (what the DSO charges
    per MWh it draws), ``marginal_value`` (its balance's multiplier plus its node price:
    what one more MWh is worth to it) and ``import_price``, ``export_price`` (the
    tariffs plus its node price)."""
    n_t, n_peers = len(market.periods), len(market.peers)
    node = outcome.node_price[:n_peers]
    imp, exp = (np.zeros(n_t), np.zeros(n_t)) if market.upstream is None else market.tariffs()
    table = pd.DataFrame(
        {
            "peer": np.repeat(market.peers, n_t),
            "bus": np.repeat([market.bus.get(p) for p in market.peers], n_t),
            "period": np.tile(market.periods, n_peers),
            "node_price": node.ravel(),
            "marginal_value": (outcome.balance_price[:n_peers] + node).ravel(),
        }
    )
    if market.upstream is not None:
        table["import_price"] = (imp + node).ravel()
        table["export_price"] = (exp + node).ravel()
    return table


def peers_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """Per agent: energy (kWh), grid trade, P2P trade, its settlement, costs, surplus.

    ``value`` is the value of consumption minus the cost of production at the agent's
    bid prices, plus its participant's welfare; ``trade_payment`` pays its trades at
    the bilateral prices, ``network_charge`` its node's price on its trades and grid
    trade (see the module docstring), ``grid_cost`` the tariffs; ``payment`` is their sum and
    ``surplus = value - payment - preference_cost`` (currency). The surpluses and the
    DSO's network charges add up to the social welfare.
    """
    dt, table = market.period_hours, market.bids
    sign = np.where(table["side"] == "sell", 1.0, -1.0)
    acc = pd.DataFrame(
        {
            "peer": table["participant"],
            "produced_kwh": np.where(sign > 0, outcome.accepted_kw, 0) * dt,
            "consumed_kwh": np.where(sign < 0, outcome.accepted_kw, 0) * dt,
            "value": -sign * table["price"].to_numpy() * outcome.accepted_kw * dt / 1000,
        }
    )
    p_kw = outcome.participant_kw
    own = pd.DataFrame(
        {
            "peer": list(market.participants),
            "produced_kwh": np.clip(p_kw, 0, None).sum(axis=1) * dt,
            "consumed_kwh": np.clip(-p_kw, 0, None).sum(axis=1) * dt,
            "value": outcome.participant_welfare,
        }
    )
    out = pd.concat([acc, own]).groupby("peer").sum().reindex(market.agents).fillna(0.0)
    x, price = outcome.trade_kw, outcome.price
    owner = [i for i, _ in market.pairs]
    paid = market.sell_cost * np.clip(x, 0, None) + market.buy_cost * np.clip(-x, 0, None)
    per_pair = pd.DataFrame(
        {
            "peer": owner,
            "sold_kwh": np.clip(x, 0, None).sum(axis=1) * dt,
            "bought_kwh": np.clip(-x, 0, None).sum(axis=1) * dt,
            "trade_payment": -(x * price).sum(axis=1) * dt / 1000,
            "preference_cost": (paid + market.quadratic / 2 * x**2).sum(axis=1) * dt / 1000,
        }
    )
    out = out.join(per_pair.groupby("peer").sum()).fillna(0.0)
    out["network_charge"] = _network_charges(market, outcome)
    out = out.join(_grid_columns(market, outcome)).fillna(0.0)
    out["payment"] = out["trade_payment"] + out["network_charge"] + out["grid_cost"]
    out["surplus"] = out["value"] - out["payment"] - out["preference_cost"]
    out.insert(0, "community", [market.community.get(a) for a in market.agents])
    out.insert(0, "bus", [market.bus.get(a) for a in market.agents])
    return out.rename_axis("peer").reset_index()


def _network_charges(market: Market, outcome: Outcome) -> np.ndarray:
    """Per agent: its node's price on what it buys minus what it sells, trades and grid
    trade alike: ``sum_t node_price[i,t] (import - export - sum_j trade[i,j,t]) dt``."""
    bought = np.zeros_like(outcome.node_price)
    owner = np.array([market.agents.index(i) for i, _ in market.pairs], dtype=int)
    np.add.at(bought, owner, -outcome.trade_kw)
    bought[: len(market.peers)] += outcome.import_kw - outcome.export_kw
    return (outcome.node_price * bought).sum(axis=1) * market.period_hours / 1000


def _grid_columns(market: Market, outcome: Outcome) -> pd.DataFrame:
    dt = market.period_hours
    frame = pd.DataFrame(index=market.peers)
    frame["import_kwh"] = outcome.import_kw.sum(axis=1) * dt
    frame["export_kwh"] = outcome.export_kw.sum(axis=1) * dt
    if market.upstream is None:
        frame["grid_cost"] = 0.0
        return frame
    imp, exp = market.tariffs()
    frame["grid_cost"] = (outcome.import_kw @ imp - outcome.export_kw @ exp) * dt / 1000
    return frame


def upstream_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """Import and export with the upstream grid per period (all peers), with tariffs."""
    imp, exp = market.tariffs()
    return pd.DataFrame(
        {
            "period": market.periods,
            "import_kw": outcome.import_kw.sum(axis=0),
            "export_kw": outcome.export_kw.sum(axis=0),
            "import_price": imp,
            "export_price": exp,
        }
    )


def injections_table(market: Market, outcome: Outcome) -> pd.DataFrame:
    """Each peer's physical net injection per period, positive into the grid: ``p_kw``
    and ``q_kvar`` (each block's reactive ratio times its accepted kW; participants at
    unity power factor)."""
    table = market.bids
    sign = np.where(table["side"] == "sell", 1.0, -1.0)
    p_kw = sign * outcome.accepted_kw
    net = table.assign(p_kw=p_kw, q_kvar=p_kw * reactive_ratio(table))
    names, n_t = list(market.participants), len(market.periods)
    own = pd.DataFrame(
        {
            "participant": np.repeat(names, n_t),
            "period": np.tile(market.periods, len(names)),
            "p_kw": outcome.participant_kw.ravel(),
            "q_kvar": 0.0,
        }
    )
    net = pd.concat([net[own.columns], own]) if len(names) else net
    net = net.groupby(["participant", "period"], as_index=False)[["p_kw", "q_kvar"]].sum()
    net = net.rename(columns={"participant": "peer"})
    return net.assign(bus=net["peer"].map(market.bus))[["peer", "bus", "period", "p_kw", "q_kvar"]]


def grid_only(market: Market, node_price: np.ndarray | None = None) -> pd.Series:
    """Each peer's surplus trading alone with the upstream grid (currency).

    Per period its own offers and bids meet the grid's import, a supply step at
    ``import_price + node_price``, and export, a demand step at ``export_price +
    node_price`` (each up to ``capacity_kw``): the peer's best, by merit order
    (:func:`merit_order_surplus`). ``node_price`` (peers x periods, currency/MWh; 0 by
    default) is the network charge its grid trade pays in the cleared market. A peer
    whose periods are coupled (:attr:`Market.model_peers`) solves its own model.
    """
    n_t, table = len(market.periods), market.bids
    node = np.zeros((len(market.peers), n_t)) if node_price is None else node_price
    imp, exp = (np.zeros(n_t), np.zeros(n_t)) if market.upstream is None else market.tariffs()
    cap = np.inf if market.upstream is None else market.upstream.capacity_kw or np.inf
    peer = table["participant"].map({p: k for k, p in enumerate(market.peers)}).to_numpy()
    period = table["period"].map({t: k for k, t in enumerate(market.periods)}).to_numpy()
    sell = (table["side"] == "sell").to_numpy()
    price, kw = table["price"].to_numpy(float), table["quantity_kw"].to_numpy(float)
    order = np.lexsort((period, peer))
    starts = np.flatnonzero(np.diff(peer[order] * n_t + period[order], prepend=-1))
    surplus = np.zeros(len(market.peers))
    for rows in np.split(order, starts[1:]) if len(order) else []:
        i, k, own = peer[rows[0]], period[rows[0]], sell[rows]
        supply_price, supply_kw = price[rows][own], kw[rows][own]
        demand_price, demand_kw = price[rows][~own], kw[rows][~own]
        if market.upstream is not None:
            grid_in, grid_out = min(cap, demand_kw.sum()), min(cap, supply_kw.sum())
            supply_price = np.append(supply_price, imp[k] + node[i, k])
            supply_kw = np.append(supply_kw, grid_in)
            demand_price = np.append(demand_price, exp[k] + node[i, k])
            demand_kw = np.append(demand_kw, grid_out)
        gain = merit_order_surplus(supply_price, supply_kw, demand_price, demand_kw)
        surplus[i] += gain * market.period_hours / 1000
    for i, peer in enumerate(market.peers):
        if peer in market.model_peers:
            surplus[i] = _grid_only_model(market, peer, node[i])
    return pd.Series(surplus, index=market.peers, name="baseline_surplus")


def _grid_only_model(market: Market, peer: str, node_price: np.ndarray) -> float:
    """A model peer's best surplus with the grid alone (currency): its own model, no
    trade; NaN when it cannot stand alone (a must-run output and no grid to take it)."""
    m, injection, welfare = own_model(market, peer, node_price)
    m.no_trade = pyo.Constraint(
        range(len(injection)), rule=lambda m, k: injection[k] == 0, doc="trades = 0  (kW)"
    )
    m.own_welfare = pyo.Objective(expr=welfare, sense=pyo.maximize, doc="own welfare (currency)")
    _scale_quadratic(m, m.market)
    try:
        return solve(m).objective
    except InfeasibleError:
        return float("nan")


def merit_order_surplus(
    supply_price: np.ndarray, supply_kw: np.ndarray, demand_price: np.ndarray, demand_kw: np.ndarray
) -> float:
    """The largest ``sum (demand price - supply price) x quantity`` of matched steps
    ((currency/MWh) kW): supply sorted up, demand sorted down, matched while demand
    values more than supply costs."""
    up, down = np.argsort(supply_price, kind="stable"), np.argsort(-demand_price, kind="stable")
    s_end, d_end = np.cumsum(supply_kw[up]), np.cumsum(demand_kw[down])
    if not len(s_end) or not len(d_end):
        return 0.0
    x = np.unique(np.concatenate([[0.0], s_end, d_end]))
    x = x[x <= min(s_end[-1], d_end[-1])]
    mid = (x[:-1] + x[1:]) / 2
    gap = (
        demand_price[down][np.searchsorted(d_end, mid)]
        - supply_price[up][np.searchsorted(s_end, mid)]
    )
    return float(np.clip(gap, 0.0, None) @ np.diff(x))


def market_scale(market: Market) -> float:
    """The market's own scale (currency): ``sum |price| quantity_kw dt`` over its blocks."""
    table = market.bids
    stake = (table["price"].abs() * table["quantity_kw"]).sum()
    return float(stake) * market.period_hours / 1000


def settlement_table(peers: pd.DataFrame, network_rent: float) -> pd.DataFrame:
    """Who pays what (currency, positive: paid by the party): every agent, the DSO (which
    receives the network charges the grid's nodal prices collect) and the upstream grid
    (which receives the tariffs). A closed settlement sums to zero."""
    role = np.where(peers["peer"].str.startswith(MANAGER_PREFIX), "manager", "peer")
    parties = pd.DataFrame({"party": peers["peer"], "role": role, "payment": peers["payment"]})
    others = pd.DataFrame(
        {
            "party": ["dso", UPSTREAM],
            "role": ["dso", UPSTREAM],
            "payment": [-network_rent, -float(peers["grid_cost"].sum())],
        }
    )
    return pd.concat([parties, others], ignore_index=True)


def tables(
    market: Market, outcome: Outcome, welfare: float, *, rel_tol: float = 1e-6
) -> tuple[dict, dict]:
    """The result tables, KPIs and certificates of an outcome (central or ADMM).

    Certificates: every peer's ``gain`` over its grid-only baseline at its prices
    (``min_gain``; ``individually_rational`` when it is at least ``-gain_tolerance``,
    ``rel_tol`` times :func:`market_scale` plus the participants' welfare in absolute
    value; peers that cannot stand alone have no baseline, NaN), and
    ``reconciliation_error``, the sum of the settlement table (currency).
    """
    trades = trades_table(market, outcome)
    peers = peers_table(market, outcome)
    baseline = grid_only(market, outcome.node_price[: len(market.peers)])
    peers = peers.join(baseline, on="peer")
    is_manager = peers["peer"].isin(market.managers)
    peers.loc[is_manager, "baseline_surplus"] = 0.0  # NaN: a peer that cannot stand alone
    peers["gain"] = peers["surplus"] - peers["baseline_surplus"]
    settlement = settlement_table(peers, outcome.network_rent)
    out = {
        "trades": trades,
        "peers": peers,
        "settlement": settlement,
        "pair_prices": pair_prices_table(market, outcome),
        "grid_prices": grid_prices_table(market, outcome),
        "injections": injections_table(market, outcome),
    }
    if market.upstream is not None:
        out["upstream"] = upstream_table(market, outcome)
    if len(market.budgets):
        out["budgets"] = budgets_table(market, outcome)
    is_peer = peers["peer"].isin(market.peers)
    p2p_trades = trades[trades["seller"].isin(market.peers)]
    consumed = float(peers["consumed_kwh"].sum())
    stake = market_scale(market) + float(np.abs(outcome.participant_welfare).sum())
    tolerance = rel_tol * stake
    kpis = {
        "social_welfare": welfare,
        "baseline_welfare": float(peers.loc[is_peer, "baseline_surplus"].sum()),
        "traded_kwh": float(p2p_trades["energy_kwh"].sum()),
        "import_kwh": float(peers["import_kwh"].sum()),
        "export_kwh": float(peers["export_kwh"].sum()),
        "self_sufficiency": 1.0 - float(peers["import_kwh"].sum()) / consumed if consumed else 0.0,
        "network_charges": outcome.network_rent,
        "min_gain": float(peers["gain"].min()),
        "gain_tolerance": tolerance,
        "reconciliation_error": float(settlement["payment"].sum()),
        "trades": len(trades),
    }
    kpis["individually_rational"] = float(kpis["min_gain"] >= -tolerance)
    kpis["gain_vs_grid"] = kpis["social_welfare"] - kpis["baseline_welfare"]
    return out, kpis


def results(m: pyo.ConcreteModel, solution: Solution) -> Result:
    """Tidy tables (trades, peers, settlement, injections, upstream), KPIs and
    certificates of the central clearing."""
    out, kpis = tables(m.market, central_outcome(m, solution), solution.objective)
    return Result("p2p", out, kpis, solution)


# --- distributed: consensus ADMM ------------------------------------------------------


def exchange_problem(market: Market):
    """The market as an :class:`~gridmarkets.solvers.admm.ExchangeProblem`."""
    from gridmarkets.solvers.admm import ExchangeProblem, ModelAgent

    index = {a: k for k, a in enumerate(market.agents)}
    period = {t: k for k, t in enumerate(market.periods)}
    n_t, table = len(market.periods), market.bids
    unit = table["participant"].map(index).to_numpy() * n_t + table["period"].map(period)
    units, supply = [unit.to_numpy()], [(table["side"] == "sell").to_numpy()]
    thresholds, quantities = [table["price"].to_numpy()], [table["quantity_kw"].to_numpy()]
    if market.upstream is not None:
        imp, exp = market.tariffs()
        cap = market.upstream.capacity_kw or np.inf
        grid_units = np.array([index[p] * n_t + k for p in market.peers for k in range(n_t)])
        for is_supply, tariff in ((True, imp), (False, exp)):
            units.append(grid_units)
            supply.append(np.full(grid_units.size, is_supply))
            thresholds.append(np.tile(tariff, len(market.peers)))
            quantities.append(np.full(grid_units.size, float(cap)))
    models = {
        index[p]: ModelAgent(*own_model(market, p), market.period_hours) for p in market.model_peers
    }
    return ExchangeProblem(
        n_agents=len(market.agents),
        n_periods=n_t,
        item_unit=np.concatenate(units).astype(int),
        item_supply=np.concatenate(supply).astype(bool),
        item_threshold=np.concatenate(thresholds).astype(float),
        item_quantity_kw=np.concatenate(quantities).astype(float),
        pair_from=np.array([index[i] for i, _ in market.pairs], dtype=int),
        pair_to=np.array([index[j] for _, j in market.pairs], dtype=int),
        pair_cost=market.sell_cost,
        pair_buy_cost=market.buy_cost,
        quadratic=market.quadratic,
        model_agents=models,
    )


def admm_outcome(market: Market, problem, run) -> Outcome:
    """An :class:`Outcome` from an ADMM run (consensus trades, which are reciprocal);
    model agents' own decisions and budget values from their last step."""
    n_bids, n_t, n_peers = len(market.bids), len(market.periods), len(market.peers)
    taken = run.taken_kw.copy()
    imp = exp = np.zeros((n_peers, n_t))
    if market.upstream is not None:
        grid = taken[n_bids:]
        imp = grid[: n_peers * n_t].reshape(n_peers, n_t)
        exp = grid[n_peers * n_t :].reshape(n_peers, n_t)
    budget_value = pd.Series(0.0, index=market.budgets.index)
    names = list(market.participants)
    participant_kw, participant_welfare = np.zeros((len(names), n_t)), np.zeros(len(names))
    position = {b: k for k, b in enumerate(market.bids.index)}
    for model in problem.model_agents.values():
        m = model.model
        if len(m.PARTICIPANTS):
            values, k = participant_values(m), names.index(m.market.peers[0])
            participant_kw[k], participant_welfare[k] = (
                values["participant_kw"][0],
                values["participant_welfare"][0],
            )
        taken[[position[b] for b in m.BIDS]] = [m.accepted_kw[b].value for b in m.BIDS]
        if market.upstream is not None:
            k, (peer,) = market.peers.index(m.market.peers[0]), m.market.peers
            imp[k] = [m.import_kw[peer, t].value for t in market.periods]
            exp[k] = [m.export_kw[peer, t].value for t in market.periods]
        values = budget_values(m, model.solution, scale=market.period_hours)
        budget_value[m.market.budgets.index] = values
    node = np.zeros((len(market.agents), n_t))  # ADMM clears without a network
    return Outcome(
        taken[:n_bids],
        imp,
        exp,
        run.trade_kw,
        run.price,
        run.balance_price,
        node,
        budget_value=budget_value.to_numpy(),
        participant_kw=participant_kw,
        participant_welfare=participant_welfare,
    )


def welfare_of(market: Market, outcome: Outcome) -> float:
    """Social welfare of an outcome (currency), the LP's objective evaluated."""
    peers = peers_table(market, outcome)
    return float((peers["value"] - peers["grid_cost"] - peers["preference_cost"]).sum())


def clear_admm(bids: pd.DataFrame, *, admm: dict[str, Any] | None = None, **options: Any) -> Result:
    """Clear the P2P market by consensus ADMM (each agent solves only its own problem).

    Parameters
    ----------
    bids : as for :func:`build`.
    admm : options of :func:`gridmarkets.solvers.admm.consensus_admm` (rho,
        max_iterations, eps_abs, eps_rel, adapt_rho).
    options : the market options of :func:`build` except ``network`` and
        ``formulation`` (ADMM clears without the network; check it with
        :func:`dso_check`).

    Returns
    -------
    Result with the tables and certificates of the central clearing (settled at the
    ADMM's bilateral prices, no network charges) plus ``admm_log`` (one row per
    iteration); KPIs add ``iterations``, ``converged`` and ``max_balance_residual_kw``.
    """
    from gridmarkets.solvers.admm import consensus_admm

    if options.pop("network", None) is not None or options.pop("formulation", None) is not None:
        raise InputError("method admm: network-aware clearing is central only; use dso_check")
    market = prepare(bids, **options)
    problem = exchange_problem(market)
    run = consensus_admm(problem, **(admm or {}))
    outcome = admm_outcome(market, problem, run)
    welfare = welfare_of(market, outcome)
    out, kpis = tables(market, outcome, welfare)
    out["admm_log"] = run.log
    kpis.update(iterations=run.iterations, converged=float(run.converged))
    kpis["max_balance_residual_kw"] = _balance_residual(market, outcome)
    solution = Solution(
        status="optimal" if run.converged else "iteration_limit",
        optimal=run.converged,
        objective=welfare,
        best_bound=welfare,
        gap=0.0,
        is_mip=False,
        duals_from=None,
        build_seconds=None,
        translate_seconds=0.0,
        solve_seconds=run.seconds,
        n_variables=int(run.trade_kw.size + len(run.taken_kw)),
        n_binaries=0,
        n_constraints=0,
        n_nonzeros=0,
        highs_version="admm",
    )
    return Result("p2p", out, kpis, solution)


def _balance_residual(market: Market, outcome: Outcome) -> float:
    """Largest |own net + grid - sum of consensus trades| over agents and periods (kW)."""
    inj = injections_table(market, outcome).pivot_table(
        index="peer", columns="period", values="p_kw", aggfunc="sum"
    )
    net = inj.reindex(index=market.agents, columns=market.periods).fillna(0.0).to_numpy()
    net[: len(market.peers)] += outcome.import_kw - outcome.export_kw
    owner = np.array([market.agents.index(i) for i, _ in market.pairs], dtype=int)
    sold = np.zeros_like(net)
    np.add.at(sold, owner, outcome.trade_kw)
    return float(np.abs(net - sold).max()) if net.size else 0.0


# --- one call, and the DSO's check ----------------------------------------------------


def clear(
    bids: pd.DataFrame,
    *,
    method: Literal["central", "admm"] = "central",
    solve_options: dict[str, Any] | None = None,
    admm: dict[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Build, solve and report a P2P clearing in one call (see :func:`build`).

    ``method="admm"`` runs :func:`clear_admm` instead of the central LP/QP.
    """
    if method == "admm":
        return clear_admm(bids, admm=admm, **build_options)
    if method != "central":
        raise InputError(f"method: {method!r} is not 'central' or 'admm'")
    m = build(bids, **build_options)
    return results(m, solve(m, **(solve_options or {})))


def branch_flows(feeder: Any, injections: pd.DataFrame) -> pd.DataFrame:
    """Lossless active flows (kW, away from the root) per branch and period.

    The flow into a branch's receiving end is everything withdrawn below it:
    ``P_l = -sum_{buses below l} p_kw`` (LinDistFlow without losses).
    """
    below = _buses_below(feeder)
    at = injections.assign(bus=injections["bus"].map(feeder.merged))
    per_bus = at.pivot_table(index="bus", columns="period", values="p_kw", aggfunc="sum")
    rows = []
    for branch, buses in below.items():
        flow = -per_bus.reindex(list(buses)).fillna(0.0).sum(axis=0)
        for t, value in flow.items():
            rows.append((branch, t, float(value), float(feeder.branches.at[branch, "rating_kva"])))
    return pd.DataFrame(rows, columns=["branch", "period", "p_kw", "rating_kva"])


def _buses_below(feeder) -> dict[int, set]:
    below: dict[int, set] = {}
    for branch in reversed(feeder.branches.index):
        to_bus = feeder.branches.at[branch, "to_bus"]
        subtree = {to_bus}
        for child in feeder.children[to_bus]:
            subtree |= below[feeder.parent_branch[child]]
        below[branch] = subtree
    return below


def dso_check(result: Result, feeder: Any, *, max_rounds: int = 20) -> pd.DataFrame:
    """Clear-then-check: the trades whose transactions overload a branch, and their cuts.

    The flows of the cleared injections are computed with lossless LinDistFlow. A trade
    is a transaction from the seller's bus to the buyer's: it adds its quantity to the
    flow of every branch on the path between them, in the direction seller -> buyer.
    For every branch and period above its rating, the trades that cross it in the
    direction of the overload are cut in proportion to their quantity until the
    overload is gone (cutting a trade removes it from both ends: the seller produces
    and the buyer takes that much less); rounds repeat until no branch is overloaded.

    Parameters
    ----------
    result : a P2P result cleared without the network (its ``trades`` and ``injections``).
    feeder : the feeder the peers' buses are on.
    max_rounds : rounds of cuts at most.

    Returns
    -------
    One row per offending trade: seller, buyer, period, seller_bus, buyer_bus, branch
    (the first overloaded branch it crosses), traded_kw, cut_kw, remaining_kw. Empty
    when the trades respect every rating.
    """
    below = _buses_below(feeder)
    trades = result.trades.copy()
    trades["cut_kw"] = 0.0
    trades["branch"] = pd.NA
    injections = result.injections.copy()
    for _ in range(max_rounds):
        flows = branch_flows(feeder, injections)
        over = flows[flows["p_kw"].abs() > flows["rating_kva"] * (1 + 1e-9)]
        if over.empty:
            break
        for row in over.itertuples():
            _cut_branch(trades, row, below[row.branch], feeder)
        injections = _after_cuts(result.injections, trades)
    offending = trades[trades["cut_kw"] > _TOL_KW]
    columns = ["seller", "buyer", "period", "seller_bus", "buyer_bus", "branch", "traded_kw"]
    return (
        offending[columns]
        .assign(
            cut_kw=offending["cut_kw"],
            remaining_kw=offending["traded_kw"] - offending["cut_kw"],
        )
        .reset_index(drop=True)
    )


def _cut_branch(trades: pd.DataFrame, row, subtree: set, feeder) -> None:
    """Cut the trades crossing one overloaded branch in the overload's direction."""
    seller_in = trades["seller_bus"].map(feeder.merged).isin(subtree)
    buyer_in = trades["buyer_bus"].map(feeder.merged).isin(subtree)
    upward = row.p_kw < 0  # flow towards the root: sellers below, buyers above
    crossing = (seller_in & ~buyer_in) if upward else (buyer_in & ~seller_in)
    crossing &= trades["period"] == row.period
    left = trades.loc[crossing, "traded_kw"] - trades.loc[crossing, "cut_kw"]
    if left.sum() <= 0:
        return
    overload = abs(row.p_kw) - row.rating_kva
    share = min(1.0, overload / left.sum())
    trades.loc[crossing, "cut_kw"] += share * left
    trades.loc[crossing & trades["branch"].isna(), "branch"] = row.branch


def _after_cuts(injections: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    cut = trades[trades["cut_kw"] > 0]
    changes = pd.concat(
        [
            pd.DataFrame(
                {"bus": cut["seller_bus"], "period": cut["period"], "p_kw": -cut["cut_kw"]}
            ),
            pd.DataFrame({"bus": cut["buyer_bus"], "period": cut["period"], "p_kw": cut["cut_kw"]}),
        ]
    )
    return pd.concat([injections[["bus", "period", "p_kw"]], changes], ignore_index=True)
