"""Reference genome sources, edits, windows and the dataset manifest."""
