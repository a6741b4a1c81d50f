"""Development tools for the test-suite (not shipped in the labkit package)."""
