"""Bundled config.json files (public numbers) for shape-only models: `--model NAME --random-weights`."""
