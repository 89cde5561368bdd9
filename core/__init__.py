"""Shared settings, domain rules and message contracts of the presence platform."""
