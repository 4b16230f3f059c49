"""The results layer: the run's recorder, Result (flat tables, summary, saving), figures and the report.

Imports workload and below; knows no CLI, scenario or study. Open result.py first.
"""
