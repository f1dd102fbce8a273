"""The outbound tunnel: the shared protocol (:mod:`.protocol`) and the data-plane agent."""
