"""``enclavekit up``: the local stack, its state folder and its processes."""
