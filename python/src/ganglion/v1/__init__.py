"""Generated from proto/ganglion/v1 by python/scripts/generate.py. Do not edit."""
