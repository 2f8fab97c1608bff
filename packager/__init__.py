"""``lowbit package``: models compiled for a phone, linked into one archive with the engine, and
the app config and weights the app templates in ``apps/`` read."""
