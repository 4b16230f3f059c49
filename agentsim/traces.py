"""Public LLM-inference traces: validated readers (:mod:`agentsim.trace_readers`), and replay through
the simulator (:mod:`agentsim.replay`); this module keeps both under one import.

Three formats (the files in ``shared/traces/`` are examples of each):

* ``azure`` — Azure LLM inference trace 2023 (Splitwise), CSV ``TIMESTAMP,ContextTokens,
  GeneratedTokens``; ``TIMESTAMP`` is a date-time with up to 9 fractional digits (the files have
  7). Arrivals are taken relative to the earliest row. No prefix information.
* ``mooncake`` — Mooncake FAST'25 traces, JSONL with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (one chained hash per 512-token prompt block; an equal hash
  is the same block with the same prefix, so reusable KV). Arrivals relative to the earliest row (the files start at
  0). The hashes drive :class:`~agentsim.block_cache.BlockPrefixCache`.
* ``tracelab`` — TraceLab session-runner CSV (``replay/README.md`` upstream):
  ``session_id`` (or ``id``), ``round_idx``, ``prefix_len``, ``input_len``, ``output_len``,
  ``tool_wait_after_ms`` and optionally ``arrival_time`` (ms, the session's start; a missing
  column or empty value means 0). A session is a closed loop: round ``k`` is sent, its full
  response awaited, then ``tool_wait_after_ms`` slept before round ``k+1``; the first round is
  sent at the session's ``arrival_time`` (that of its lowest ``round_idx``). A round's prompt is
  ``prefix_len + input_len`` tokens, of which ``prefix_len`` are prior context the provider may
  have cached under the session's key. A round that does not complete ends its session (as
  upstream's runner does).

Every reader error is an :class:`~agentsim.errors.InputError` naming the file, the line and the
column. :func:`replay` runs a trace on a scenario's cluster (its streams and populations are
replaced by the trace) until the trace's last request ends.
"""
from __future__ import annotations

from .replay import (DEFAULT_GPU, DEFAULT_MODEL, TARGET_UTILISATION, UNBOUNDED_HOST_KV_GB,
                     UNBOUNDED_TTL_S, OpenLoopReplay, SessionReplay, default_scenario, estimated_busy_s,
                     prepare_scenario, replay, trace_summary)
from .trace_readers import (AZURE_COLUMNS, MOONCAKE_KEYS, TRACE_FORMATS, TRACELAB_COLUMNS, Trace,
                            TraceRequest, TraceRound, TraceSession, ideal_block_hit_rate, parse_azure_timestamp,
                            read_azure, read_mooncake, read_trace, read_tracelab)

__all__ = ["AZURE_COLUMNS", "DEFAULT_GPU", "DEFAULT_MODEL", "MOONCAKE_KEYS", "TARGET_UTILISATION", "TRACELAB_COLUMNS",
           "TRACE_FORMATS", "UNBOUNDED_HOST_KV_GB", "UNBOUNDED_TTL_S", "OpenLoopReplay", "SessionReplay", "Trace",
           "TraceRequest", "TraceRound", "TraceSession", "default_scenario", "estimated_busy_s", "ideal_block_hit_rate",
           "parse_azure_timestamp", "prepare_scenario", "read_azure", "read_mooncake", "read_trace", "read_tracelab",
           "replay", "trace_summary"]
