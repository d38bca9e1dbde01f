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
