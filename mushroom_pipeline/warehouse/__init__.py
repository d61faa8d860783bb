"""The warehouse's Postgres layer: SQL text, COPY, tables, the I/O manager, staging."""
