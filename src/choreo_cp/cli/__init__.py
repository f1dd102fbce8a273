"""The control plane's verbs of ``choreo-dp`` (``control-plane``, ``cp``), found through the
``choreo_dp.verbs`` entry points."""
