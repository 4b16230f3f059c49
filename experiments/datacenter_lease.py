"""Experiment `datacenter_lease` — see agentsim/experiments/datacenter_lease.py (also: `agentsim experiment datacenter_lease`)."""
import sys

from agentsim.studies.experiments.datacenter_lease import main

if __name__ == "__main__":
    main(sys.argv[1:])
