"""Speed benchmarks of the product's own functions: ``python -m benchmarks.NAME --help`` from the repository root."""
