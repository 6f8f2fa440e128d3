"""Benchmarks of digits: HTTP load against a real TorchServe, and the handler in process."""
