"""A calibrated GPU cluster that stands in for real racks, over MQTT or in an in-process loop."""
