"""The ``choreo-dp`` command line."""
