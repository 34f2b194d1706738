"""Reading datasets: Dataset, columns and the column-source protocol, memory maps, raw files, ragged fields, windows, record sources."""
