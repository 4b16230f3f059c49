"""Experiment `limits_doubling` — see agentsim/experiments/limits_doubling.py (also: `agentsim experiment limits_doubling`)."""
import sys

from agentsim.studies.experiments.limits_doubling import main

if __name__ == "__main__":
    main(sys.argv[1:])
