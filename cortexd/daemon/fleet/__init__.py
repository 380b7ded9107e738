"""Replica processes: lifecycle, placement (GPUs, cpu/mem admission), limits and autoscaling."""
