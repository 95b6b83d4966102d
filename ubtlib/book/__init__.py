"""What the book's chapters call: `setup` (chapter), the experiments that compose the cached
stages, results and readings, plots, provenance and glue (report), and the papers' numbers.
No training stage imports this package, so editing it recomputes nothing."""
