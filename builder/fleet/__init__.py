"""Fleet rolling updates: takes nodes asking FleetLock for a reboot slot, gives slots in order."""
