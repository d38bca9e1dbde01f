"""A feeder drawn with its geodata or a tree layout, coloured by voltage or loading."""

from __future__ import annotations

import json

import networkx as nx
import pandas as pd

from gridmarkets.networks.feeder import Feeder


def plot_feeder(
    feeder: Feeder, values: pd.Series | None = None, ax=None, *, on: str = "bus", label: str = ""
):
    """Draw the feeder; colour its buses or its branches by ``values``.

    Parameters
    ----------
    feeder : the feeder.
    values : e.g. v_pu per bus, or loading_percent per branch (one period); None draws
        the plain topology.
    ax : matplotlib Axes to draw on (a new figure if None).
    on : "bus" (values indexed by bus) or "branch" (indexed by branch).
    label : colour bar label.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    graph = nx.Graph()
    graph.add_nodes_from(feeder.buses.index)
    graph.add_edges_from(zip(feeder.branches["from_bus"], feeder.branches["to_bus"], strict=True))
    pos = _positions(feeder, graph)
    on_buses = values is not None and on == "bus"
    on_branches = values is not None and on == "branch"
    node_color = values.reindex(feeder.buses.index).to_numpy() if on_buses else "tab:blue"
    edge_color = values.reindex(feeder.branches.index).to_numpy() if on_branches else "grey"
    edges = list(zip(feeder.branches["from_bus"], feeder.branches["to_bus"], strict=True))
    drawn = nx.draw_networkx_edges(
        graph, pos, edgelist=edges, edge_color=edge_color, ax=ax, width=2
    )
    nodes = nx.draw_networkx_nodes(graph, pos, node_color=node_color, node_size=30, ax=ax)
    nx.draw_networkx_nodes(graph, pos, nodelist=[feeder.root], node_shape="s", node_size=80, ax=ax)
    if values is not None:
        ax.figure.colorbar(nodes if on_buses else drawn, ax=ax, label=label)
    ax.set_title(feeder.name)
    ax.set_axis_off()
    return ax


def _positions(feeder: Feeder, graph: nx.Graph) -> dict:
    """pandapower geodata where every bus has it, else a layered tree layout."""
    geo = feeder.net.bus.get("geo")
    if geo is not None and geo.reindex(feeder.buses.index).notna().all():
        points = geo.reindex(feeder.buses.index).map(lambda g: json.loads(g)["coordinates"])
        return dict(points.items())
    depth = nx.single_source_shortest_path_length(graph, feeder.root)
    nx.set_node_attributes(graph, depth, "layer")
    return nx.multipartite_layout(graph, subset_key="layer", align="horizontal", scale=-1)
