"""Private PostgreSQL and Redis servers from the local binaries, for tests, dev and the bench."""

from relay.devservers.postgres_server import PostgresServer
from relay.devservers.process import DevServerError, free_port
from relay.devservers.redis_server import RedisServer

__all__ = ["DevServerError", "PostgresServer", "RedisServer", "free_port"]
