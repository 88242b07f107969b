"""The hub: sessions with agents, the sync engine and what it feeds. No HTTP here."""
