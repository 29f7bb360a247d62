// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";

/// @title RewardToken
/// @notice The network's reward ERC-20. Only MINTER_ROLE (the RewardDistributor) creates supply, never past
///         `cap()`: a ceiling that holds even if the admin grants itself MINTER_ROLE. Admin handover is two
///         steps with a delay (AccessControlDefaultAdminRules), which also refuses a zero admin.
///         `premine` (0 by default; a devnet's buyers need tokens to deposit) is minted once at deploy to
///         `premineTo`, within the cap.
contract RewardToken is ERC20Capped, AccessControlDefaultAdminRules {
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    constructor(address admin, uint48 adminDelay, uint256 cap_, address premineTo, uint256 premine)
        ERC20("Depin Reward", "DPR")
        ERC20Capped(cap_)
        AccessControlDefaultAdminRules(adminDelay, admin)
    {
        if (premine > 0) _mint(premineTo, premine);
    }

    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }
}
