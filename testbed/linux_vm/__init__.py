"""A real Linux kernel as the testbed's client host: a QEMU VM on the client's switch port.

Modules: ``vmlinux`` (the uncompressed kernel from a vmlinuz, cached), ``initramfs`` (cpio newc,
busybox-static, the kernel's modules in modules.dep order, the ``nsdt_guest.c`` helper),
``qemu`` (command line, KVM-or-TCG probe), ``parse`` (sampler stream, /proc files, console),
``client`` (``LinuxVmClient``: start/snapshot/verify/stop), ``run`` (the runner for ``client = "linux"``).
"""

from .client import GuestSpec, LinuxVmClient, LinuxVmError  # noqa: F401
