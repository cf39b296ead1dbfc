"""One module per command group: parse flags, call the library, render. No heavy imports at the top."""
