"""The sweep lifecycle, written once for every platform."""
