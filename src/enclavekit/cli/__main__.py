"""``python -m enclavekit.cli`` (how ``enclavekit up`` starts its host pieces)."""

import atexit
import gc

from enclavekit.cli import main

# Registered first, so it runs last at exit: freeze every object into the permanent generation so that the
# interpreter's final collections skip them. The CLI imports every command; collecting all of that took 1-2 s
# of CPU per process, and on Ctrl-C nine pieces of `enclavekit up` did it at once (5 s and more on two cores).
# The operating system reclaims the memory anyway; atexit handlers and buffered output still run and flush.
atexit.register(gc.freeze)

main()
