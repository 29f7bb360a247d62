"""Chain I/O for the operator CLI and the service (web3.py 8, AsyncWeb3), one module a topic:

- `artifacts`: the compiled contracts (ABI, bytecode) and their role ids;
- `reverts`: revert data → the contract's custom error, raised as `devices.errors.ChainError`;
- `signer`: one account's transactions (nonce, gas, fees, local signing, receipts);
- `deployment`: the deployment file and the first deploy;
- `client`, `registry`, `distributor`: thin clients for DeviceRegistry and RewardDistributor.
"""
