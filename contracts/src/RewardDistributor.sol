// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

interface IMintable {
    function mint(address to, uint256 amount) external;
}

/// @title RewardDistributor
/// @notice One Merkle root per epoch committing to each owner's CUMULATIVE reward across all epochs
///         (StandardMerkleTree leaves of (address, uint256)). An owner claims against any published root
///         and receives the difference to what was already paid, so missing epochs never strands funds.
contract RewardDistributor is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant REWARDS_ROLE = keccak256("REWARDS_ROLE");

    IERC20 public immutable token;
    uint64 public latestEpoch;
    mapping(uint64 => bytes32) public roots;
    mapping(address => uint256) public claimed;

    event EpochPublished(uint64 indexed epoch, bytes32 root, uint256 total);
    event Claimed(address indexed account, uint64 indexed epoch, uint256 amount, uint256 cumulative);

    error EpochNotAfterLatest(uint64 epoch, uint64 latest);
    error ZeroRoot();
    error UnknownEpoch(uint64 epoch);
    error InvalidProof();
    error ZeroAddress();

    constructor(address admin, IERC20 token_) {
        if (admin == address(0) || address(token_) == address(0)) revert ZeroAddress();
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Epochs must strictly increase (gaps allowed for epochs with no rewards), so an epoch can be
    ///         published exactly once: a retried publish of the same epoch reverts instead of minting twice.
    function publishEpoch(uint64 epoch, bytes32 root, uint256 total) external onlyRole(REWARDS_ROLE) {
        if (epoch <= latestEpoch) revert EpochNotAfterLatest(epoch, latestEpoch);
        if (root == bytes32(0)) revert ZeroRoot();
        latestEpoch = epoch;
        roots[epoch] = root;
        if (total > 0) IMintable(address(token)).mint(address(this), total);
        emit EpochPublished(epoch, root, total);
    }

    /// @notice Anyone may submit (e.g. a relayer paying gas); tokens always go to `account`.
    /// @return amount newly paid; 0 when the cumulative amount was already claimed.
    function claim(uint64 epoch, address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        bytes32 root = roots[epoch];
        if (root == bytes32(0)) revert UnknownEpoch(epoch);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimed[account];
        // An older epoch's (smaller) cumulative pays nothing rather than reverting.
        if (cumulativeAmount > already) {
            amount = cumulativeAmount - already;
            claimed[account] = cumulativeAmount;
            token.safeTransfer(account, amount);
        }
        emit Claimed(account, epoch, amount, cumulativeAmount);
    }
}
