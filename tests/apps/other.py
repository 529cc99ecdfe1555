"""A second, trivial enclave app: same package, same image, different entrypoint."""

from enclavekit.enclave import EnclaveApp

app = EnclaveApp("other")
