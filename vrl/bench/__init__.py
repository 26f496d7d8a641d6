"""Benchmarks of judges and reward models (VL-RewardBench: :mod:`vrl.bench.vl_rewardbench`)."""
