"""Provider adapters, the routing table and the streaming pipe."""
