"""UEFI firmware data: takes the fleet's Secure Boot certificates, gives variable stores.

The edk2 store QEMU boots with OVMF, and the same variables as the UefiData an AMI carries.
"""
