"""Redis-backed, high-throughput ticket booking engine."""
