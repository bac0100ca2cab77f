"""Herald as a Mercure 1.0 hub at ``/.well-known/mercure``, on the same hub.

See docs/mercure.md for the mapping and what is not implemented."""
