"""What the gateway keeps in Redis, one module a concept: the inbox, the turn ledger, the
conversation lease and its fenced writes, conversation records, dead letters, fingerprints,
pacing slots, the shared clock, and the checks and the embedded server for Redis itself.
Imports only the foundation."""
