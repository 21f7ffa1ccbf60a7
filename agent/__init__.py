"""The node agent: reads and caps one server's GPUs, speaking wire protocol v1."""
