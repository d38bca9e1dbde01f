"""A small radial pandapower net for tests: one helper instead of a copy per test file."""

import pandapower as pp


def radial_net(
    vn_kv: float,
    lines: list[tuple[int, int, float]],
    *,
    length_km: float,
    r_ohm_per_km: float,
    x_ohm_per_km: float,
    vmin_pu: float = 0.9,
    vmax_pu: float = 1.1,
    sn_mva: float = 1.0,
):
    """Buses 0..n at ``vn_kv`` with the external grid at bus 0, and one line per
    (from_bus, to_bus, max_i_ka), all with the same impedance per km and no charging."""
    net = pp.create_empty_network(sn_mva=sn_mva)
    n_buses = 1 + max(max(a, b) for a, b, _ in lines)
    buses = [
        pp.create_bus(net, vn_kv=vn_kv, min_vm_pu=vmin_pu, max_vm_pu=vmax_pu)
        for _ in range(n_buses)
    ]
    pp.create_ext_grid(net, buses[0], vm_pu=1.0)
    for a, b, max_i_ka in lines:
        pp.create_line_from_parameters(
            net,
            buses[a],
            buses[b],
            length_km=length_km,
            r_ohm_per_km=r_ohm_per_km,
            x_ohm_per_km=x_ohm_per_km,
            c_nf_per_km=0.0,
            max_i_ka=max_i_ka,
        )
    return net


def runpp_3ph_voltages(net, buses, injections, periods, *, own_elements: bool = False):
    """pandapower's runpp_3ph of per-phase injections, one run per period.

    ``injections``: a long table bus, phase (a connection: "a", "bc", "abc", ...),
    period, p_kw (into the grid); a connection to k phases puts a k-th on each, as one
    wye asymmetric sgen per row. The net's own loads and generators are switched off
    unless ``own_elements``. Returns (buses x 3 x periods) phase voltages in pu.
    """
    import copy

    import numpy as np

    net = copy.deepcopy(net)
    if not own_elements:
        for table in ("load", "sgen", "asymmetric_load", "asymmetric_sgen"):
            net[table]["in_service"] = False
    out = np.empty((len(buses), 3, len(periods)))
    for k, t in enumerate(periods):
        rows = injections[injections["period"] == t]
        added = []
        for row in rows.itertuples():
            share = row.p_kw / len(row.phase) / 1000
            powers = {f"p_{p}_mw": share if p in row.phase else 0.0 for p in "abc"}
            added.append(pp.create_asymmetric_sgen(net, row.bus, **powers))
        pp.runpp_3ph(net, numba=False)
        out[:, :, k] = net.res_bus_3ph.loc[list(buses), [f"vm_{p}_pu" for p in "abc"]].to_numpy()
        net.asymmetric_sgen = net.asymmetric_sgen.drop(added)
    return out


LV = [1, 2, 3, 4, 5]  # the LV buses of lv_net: 1 (transformer), 1-2-3-4 and 2-5


def lv_net(*, max_i_ka: float = 0.3, vmin_pu: float = 0.85, charging_nf: float = 0.0):
    """10 kV grid, a 250 kVA Dyn transformer (one tap step up) and a 0.4 kV feeder with
    zero-sequence impedances four times the positive ones: 1-2-3-4 and 2-5; the line 2-3
    has ``max_i_ka``."""
    net = pp.create_empty_network(sn_mva=0.5)
    mv = pp.create_bus(net, vn_kv=10.0)
    pp.create_ext_grid(net, mv, vm_pu=1.02, s_sc_max_mva=1e4, rx_max=0.1, x0x_max=1.0, r0x0_max=0.1)
    buses = [pp.create_bus(net, 0.4, min_vm_pu=vmin_pu, max_vm_pu=1.1) for _ in LV]
    pp.create_transformer_from_parameters(
        net, mv, buses[0], sn_mva=0.25, vn_hv_kv=10.0, vn_lv_kv=0.4, vk_percent=4.0,
        vkr_percent=1.2, pfe_kw=0.0, i0_percent=0.0, vector_group="Dyn", vk0_percent=4.0,
        vkr0_percent=1.2, mag0_percent=100.0, mag0_rx=0.0, si0_hv_partial=0.9,
        shift_degree=150.0, tap_side="hv", tap_neutral=0, tap_pos=1, tap_step_percent=2.5,
        tap_changer_type="Ratio",
    )  # fmt: skip
    for a, b in ((1, 2), (2, 3), (3, 4), (2, 5)):
        pp.create_line_from_parameters(
            net, a, b, length_km=0.2, r_ohm_per_km=0.2, x_ohm_per_km=0.08,
            c_nf_per_km=charging_nf, max_i_ka=max_i_ka if (a, b) == (2, 3) else 0.3,
            r0_ohm_per_km=0.8, x0_ohm_per_km=0.32, c0_nf_per_km=charging_nf,
        )  # fmt: skip
    return net
