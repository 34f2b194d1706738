"""Foundation used by every layer: argument checks, fork safety, libc bindings."""
