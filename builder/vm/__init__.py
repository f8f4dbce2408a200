"""Stage 4, the VM: takes a built image, boots it under QEMU and runs the test suite against it."""
