"""``python -m enclavekit.enclave APP ...``: the minimal entry point of an enclave process (see ``launch``)."""

from enclavekit.enclave.launch import main

raise SystemExit(main())
