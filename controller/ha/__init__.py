"""One commanding controller per site: leader election on an existing engine, and fencing.

`build_leadership` picks the engine from the policy's `ha:` section; `HaRunner` keeps the
campaign going beside the daemon's other loops and tells the daemon when it may command.
"""
