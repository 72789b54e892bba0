"""dg-lsp: code infilling language server on a DiffusionGemma-architecture diffusion model."""

__version__ = "0.1.0"
