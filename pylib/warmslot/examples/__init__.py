"""Example bots that ship with warmslot (used by ``warmslot demo``)."""
