"""Distribution networks: pandapower to radial feeder, LinDistFlow, AC check, prices."""
