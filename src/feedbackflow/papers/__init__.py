"""One subpackage per paper. A paper imports only the shared layers, never another paper or `tiny`."""
