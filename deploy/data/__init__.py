"""Images in: sources (folders, globs, list files with labels) and the one preprocessing pipeline."""
