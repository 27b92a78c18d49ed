"""Benchmarks: `python -m bench <name> [args]` runs bench/<name>.py:main(argv); each prints one
JSON object as its last line of output."""
