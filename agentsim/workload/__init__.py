"""The workload layer: agent sessions and their clients with retries, populations, profiles, length distributions, arrival sources and trace readers.

Imports provider, serving, model and util. Open sessions.py first.
"""
