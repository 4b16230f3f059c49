"""The studies layer: what runs many simulations or fits data: estimate, sweeps and slicing, capacity search, calibration, validation against theory, capacity utilisation and the experiments.

Imports run and below; only the CLI sits above it. Open estimate.py first.
"""
