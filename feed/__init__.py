"""The dashboard feed: STATUS_CHANGED events into a sequenced stream for the dashboard websocket."""
