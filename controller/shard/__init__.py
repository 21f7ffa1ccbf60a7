"""Telemetry ingest past one process: workers on an MQTT 5 shared subscription writing the fleet
arrays in shared memory, which the decision process reads every tick.

`controller.config.IngestSection` turns it on (`ingest.workers`), `shared_fleet.SharedFleet` lays
the arrays out in one shared-memory segment, `worker` is one worker process, `pool.IngestPool`
starts, watches and stops them.
"""
