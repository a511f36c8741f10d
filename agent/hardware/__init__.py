"""Hardware integration outside the protocol core: udev rules, USB discovery, token inventory and ``doctor``.

Nothing here is needed to run the agent; it explains and fixes the machine around it. PKCS#11 is reached only
through :mod:`backends` (python-pkcs11 is never imported here).
"""
