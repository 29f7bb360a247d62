"""The compiled contracts' artifacts (<Name>.json, written by contracts/build.js), installed as the package
`depin_contracts` (pyproject.toml maps it to this directory) so that a wheel carries them;
devices/chain/artifacts.py reads them with importlib.resources."""
