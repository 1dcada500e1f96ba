"""Video needle-in-a-haystack task benchmark: data (data.py), a small reader (reader.py), evaluation (evaluate.py)."""
