"""The contract between a device and the service: wire types, the COSE_Sign1 codec, MQTT topics,
hardware classes and the fold of the on-chain registry's events. Pure; imports nothing first-party
outside `devices.protocol` (tests/unit/test_layering.py)."""
