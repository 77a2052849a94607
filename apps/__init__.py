"""Command-line programs: thin entry points over the library. Imported as `hslm.apps`."""
