"""Stage 3, the disk: takes the root tree, gives the A/B disk image and the update payload.

erofs + dm-verity slot, UKI, ESP, GPT layout, raw and qcow2; nothing is mounted.
"""
