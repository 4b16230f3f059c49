"""The run layer: scenarios as validated data, the composition root build(scenario, seed), the Simulation, trace replay and the simulate() entry point.

Imports results and below. Open build.py first.
"""
