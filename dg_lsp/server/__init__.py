"""The pygls language server: thin async handlers over the engine."""
