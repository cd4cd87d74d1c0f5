"""Thin Ray Tune entry points over attrsub: the mining sweep, the shared actor, the study."""
