"""Experiment `retry_storm` — see agentsim/experiments/retry_storm.py (also: `agentsim experiment retry_storm`)."""
import sys

from agentsim.studies.experiments.retry_storm import main

if __name__ == "__main__":
    main(sys.argv[1:])
