"""Data for nanoRGRA: the character tokenizer and the synthetic arithmetic task family."""
