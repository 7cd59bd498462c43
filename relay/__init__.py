"""relay: an authenticated, privacy-preserving gateway in front of LLM providers."""

__version__ = "0.1.0"
