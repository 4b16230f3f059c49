"""Experiment `mixed_fleet_routing` — see agentsim/experiments/mixed_fleet_routing.py (also: `agentsim experiment mixed_fleet_routing`)."""
import sys

from agentsim.studies.experiments.mixed_fleet_routing import main

if __name__ == "__main__":
    main(sys.argv[1:])
