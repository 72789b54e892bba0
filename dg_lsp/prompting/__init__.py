"""Prompt formats: the project's FIM layout, or a chat turn for instruction-tuned checkpoints.

Submodules: :mod:`.checkpoint` (which format a checkpoint supports, its eos ids and sampler),
:mod:`.chat` (the instruction and its rendering with the checkpoint's chat template),
:mod:`.answer` (cleaning a chat answer down to code).
"""
