"""The `relay` subcommands that are not owned by a domain package."""
