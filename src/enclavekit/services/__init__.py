"""enclavekit's services, each built on the core and never on another service: notify, trust, inference, vault."""
