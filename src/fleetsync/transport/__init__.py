"""Transports carry protocol messages between agents and hubs; they never apply a rule themselves."""
