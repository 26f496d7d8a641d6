"""vrl: RL from verifiable rewards for vision-language models."""
