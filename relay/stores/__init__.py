"""SQL, one aggregate per module, over an aiopg pool."""
