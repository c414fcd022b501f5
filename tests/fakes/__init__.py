"""Local aiohttp servers that speak real wire formats, so tests drive the production clients."""
