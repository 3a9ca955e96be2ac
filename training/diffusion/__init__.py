"""Step (iii): the conditional set-diffusion retriever (EDM, x0-prediction transformer, CFG)."""
