"""The tunnel's wire protocol, shared by the agent (:mod:`choreo_dp.agent`) and the reference control
plane (:mod:`choreo_cp`); neither end owns it, and it imports nothing of either."""
