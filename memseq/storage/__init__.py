"""The on-disk format: manifest, .npy headers, shard layout, safe file access, atomic commit, checksums."""
