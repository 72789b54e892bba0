"""Model configuration, loading and checkpoint writing for DiffusionGemma-architecture models."""
