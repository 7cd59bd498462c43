"""The HTTP surface: handlers and middlewares only; rules live in relay.services."""
