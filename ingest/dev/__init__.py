"""Parts for running everything on one machine (the demo, tests, benchmarks): local brokers, a local
chain, the demo. `depin run` never imports this package (tests/unit/test_layering.py checks it), so a
production install needs none of it nor its optional dependencies (the `embedded` extra)."""
