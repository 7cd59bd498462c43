"""Business rules, free of aiohttp request objects."""
