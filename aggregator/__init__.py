"""The aggregator: STATUS_CHANGED events into the status timeline and per-day offline seconds in MongoDB."""
