"""Step (i): the fan-out LM — prompts, parsing, rewards, sampling and GRPO (paper §2)."""
