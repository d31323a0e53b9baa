"""Agents, one module per stream; found by Faust's autodiscovery."""
