"""Search: the jitted sampler, and (later) best-of-N, beam/lookahead, revisions."""
