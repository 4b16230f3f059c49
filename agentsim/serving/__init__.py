"""The serving layer: requests, the replica engines (event-skipping and step-by-step), scheduling, prefix caches, the cluster with its routers, the queue guard behind them (routing_guard.py) and pool autoscaling (autoscale.py).

Imports agentsim.model and agentsim.util; knows no scenario, workload or provider. Open engine.py first.
"""
