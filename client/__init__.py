"""The supplier side: a Flower ClientApp that runs at a supplier's factory, next to its data.

It reads only the site's own export, validates it against the task's schema, shares
aggregate statistics and model updates, and keeps every row on-site.
"""
