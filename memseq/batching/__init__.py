"""MemmapSequence: batches from a dataset and an order, padding, buffers, worker threads and processes."""
