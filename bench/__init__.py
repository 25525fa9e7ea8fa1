"""The benchmark (bench.py); a package so that tests/support.py can build big archives with it."""
