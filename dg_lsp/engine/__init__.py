"""The resident diffusion engine: prompt cache, denoising loop, sampler."""
