"""`eaglex serve`: an OpenAI-compatible HTTP server over the batching runtime (extra `eaglex[serve]`)."""
