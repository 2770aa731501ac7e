"""Differential privacy for supplier sites and the coordinator (record-level DP-SGD, budgets,
signed privacy reports). Not built yet: see the project's privacy issue."""
