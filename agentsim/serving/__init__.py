"""The serving layer: requests, the replica engines (event-skipping and step-by-step), scheduling, prefix caches and the cluster with its router.

Imports agentsim.model and agentsim.util; knows no scenario, workload or provider. Open engine.py first.
"""
