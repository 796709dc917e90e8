"""GPUs: what a node has (inventory), which a rank gets (binding), what PanDA is told and what is monitored."""
