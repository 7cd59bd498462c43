"""`make bench`: relay measured against the simulator directly and against a bare aiohttp proxy."""
