"""Public LLM-inference traces under one import: the readers (:mod:`agentsim.workload.trace_readers`, where
the three formats — azure, mooncake, tracelab — are described) and the replay through the
simulator (:mod:`agentsim.run.replay`). Kept so that ``agentsim.run.traces`` works as before the split.
"""
from __future__ import annotations

from .replay import (DEFAULT_GPU, DEFAULT_MODEL, TARGET_UTILISATION, UNBOUNDED_HOST_KV_GB,
                     UNBOUNDED_TTL_S, OpenLoopReplay, SessionReplay, default_scenario, estimated_busy_s,
                     prepare_scenario, replay, trace_summary)
from ..workload.trace_readers import (AZURE_COLUMNS, MOONCAKE_KEYS, TRACE_FORMATS, TRACELAB_COLUMNS, Trace,
                            TraceRequest, TraceRound, TraceSession, ideal_block_hit_rate, parse_azure_timestamp,
                            read_azure, read_mooncake, read_trace, read_tracelab)

__all__ = ["AZURE_COLUMNS", "DEFAULT_GPU", "DEFAULT_MODEL", "MOONCAKE_KEYS", "TARGET_UTILISATION", "TRACELAB_COLUMNS",
           "TRACE_FORMATS", "UNBOUNDED_HOST_KV_GB", "UNBOUNDED_TTL_S", "OpenLoopReplay", "SessionReplay", "Trace",
           "TraceRequest", "TraceRound", "TraceSession", "default_scenario", "estimated_busy_s", "ideal_block_hit_rate",
           "parse_azure_timestamp", "prepare_scenario", "read_azure", "read_mooncake", "read_trace", "read_tracelab",
           "replay", "trace_summary"]
