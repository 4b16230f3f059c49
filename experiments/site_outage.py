"""Experiment `site_outage` — see agentsim/experiments/site_outage.py (also: `agentsim experiment site_outage`)."""
import sys

from agentsim.studies.experiments.site_outage import main

if __name__ == "__main__":
    main(sys.argv[1:])
