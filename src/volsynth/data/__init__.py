"""Datasets: the contract, verification, preparation (plan) and phantom generators."""
