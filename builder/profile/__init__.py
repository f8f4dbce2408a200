"""Stage 1, the profile: takes YAML files from profiles/, gives a validated, frozen `Profile`.

Also what the profile's rules read: the component catalogue, version parsing and version skew.
"""
