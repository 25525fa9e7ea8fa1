"""rear's test suites beyond test_rear.py, and what they share (support.py)."""
