"""The tiny scale: synthetic worlds in the real file formats, tiny models built from configs, and the claims a
finished tiny run must show. Nothing outside `tiny` imports it."""
