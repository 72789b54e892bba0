"""Training data for the embedded model: corpus building, license policy, decontamination and tokenizer."""
