"""ttscale: test-time compute scaling for language models, in JAX."""
