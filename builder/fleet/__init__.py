"""Fleet rolling updates: the FleetLock coordinator (`hostbuild fleet serve`).

Takes FleetLock requests from nodes (Zincati's protocol, plus optional version and health
fields) and a rollout policy; gives reboot slots whose state lives only in etcd.
"""
