"""The floor beneath everything: constants (file names, traits), errors, atomic file writes and reads, the CPU thread policy."""
