"""The provider layer: the gateway's policy chain (rate limits, usage windows, spend caps, peak throttle, shedding), limit presets and wall-clock schedules.

Imports serving, model and util; a policy sees the request and a read-only view (gateway.PolicyView). Open gateway.py first.
"""
