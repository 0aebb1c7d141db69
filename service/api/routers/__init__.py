"""One router per control-plane resource."""
