"""The local web viewer and JSON API (``covidseg serve``): :mod:`covidseg.serve.app`."""
