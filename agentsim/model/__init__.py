"""The hardware and model layer: GPUs, models, catalogs, engine presets, deployments (memory, KV capacity) and the step-time model (measured op tables, fitted grids, service times).

Imports only agentsim.util. Open servicetime.py first.
"""
