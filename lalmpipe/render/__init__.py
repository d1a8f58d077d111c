"""Renderers of a typed report (lalmpipe.results): text, Markdown, CSV, the HTML page and the
plot, each in a module of its own; the tables and sentences they share, and the registry of
headings and formats, beside them."""
