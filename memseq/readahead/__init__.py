"""Which rows an epoch will need next, and the threads that page them in ahead of the reader."""
