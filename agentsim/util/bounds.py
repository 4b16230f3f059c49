"""The bounds of every number a scenario, a flag or a file may hold (one home: every layer checks against them)."""
# Every number is finite (``allow_inf_nan=False``) and within these bounds, which the schema shows
# as ``maximum``. They sit far above any real deployment (a 220k-GPU fleet, a million users, years
# of simulated time) and far below what would exhaust memory or overflow a counter: a 1e10
# replica count or a 1e12 rate is a typo, not a scenario. How much work a valid scenario is, is a
# separate question (``agentsim.run.checks``).
MAX_DURATION_S = 1e9                    #: ~30 years: also bounds every other time (outages, timeouts)
MAX_RATE = 1e6                          #: requests (or tasks) per second of one stream or fleet
MAX_REQUESTS = 1_000_000_000            #: requests of one stream
MAX_REPLICAS = 1_000_000                #: replicas of one pool
MAX_USERS = 100_000_000                 #: users, workers or tenants of one population
MAX_COUNT = 10_000_000                  #: batch sizes, closed-loop clients, priorities
MAX_TOKENS = 1_000_000_000              #: a token budget per step
MAX_TTL_S = 1e12                        #: prefix-cache TTL (1e12 s = never expires: replay --unbounded-cache)
MAX_HOST_KV_GB = 1e6                    #: host KV tier per replica (1e6 GB = unbounded: replay --unbounded-cache)
MAX_SLO_S = 1e9                         #: SLO bounds (1e9 s = no SLO, as estimate uses)
MAX_SLICES = 1_000_000
MAX_SEED = 2**63 - 1
