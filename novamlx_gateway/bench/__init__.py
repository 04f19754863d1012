"""`novamlx bench`: an OpenAI-compatible load generator and a side-by-side comparison runner."""
