"""Experiment `energy` — see agentsim/experiments/energy.py (also: `agentsim experiment energy`)."""
import sys

from agentsim.studies.experiments.energy import main

if __name__ == "__main__":
    main(sys.argv[1:])
