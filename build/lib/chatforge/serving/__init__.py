"""The HTTP service: OpenAI-compatible API, cache, store, A/B router, filters."""
