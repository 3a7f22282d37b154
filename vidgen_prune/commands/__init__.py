"""One module per CLI command; each function's docstring is its help text."""
