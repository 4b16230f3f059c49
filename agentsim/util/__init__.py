"""The bottom layer: errors, statistics, strict JSON, atomic writes and output folders.

Imports nothing of agentsim: every other layer may use it.
"""
