"""The thin kopf layer: watches feed caches and a work queue; workers run the pure core and apply its plan."""
