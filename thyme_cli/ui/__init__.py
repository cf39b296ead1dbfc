"""What the user sees: consoles, live rendering, terminal images, the HTML report, progress displays."""
