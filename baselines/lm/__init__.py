"""Language-model plumbing: loading, sampling, scoring (token log-probs), fast decoding, the embedded model."""
