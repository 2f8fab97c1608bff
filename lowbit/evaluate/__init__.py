"""Model evaluation: perplexity on the fixed corpus split."""
