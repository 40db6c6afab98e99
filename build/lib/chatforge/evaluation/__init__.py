"""Metrics (BLEU/chrF via sacrebleu, perplexity, accuracy/F1, latency) and the report."""
