// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

interface IMintable {
    function mint(address to, uint256 amount) external;
}

/// @title RewardDistributor
/// @notice Each published root commits to every owner's CUMULATIVE reward across all epochs
///         (StandardMerkleTree leaves of (address, uint256)), together with the cumulative total of those
///         amounts. Only the difference to what was already minted is minted, within an emission schedule
///         fixed at deploy, so a stolen REWARDS key cannot create supply beyond it.
///         A new root is pending for `challengeWindow` seconds, during which GUARDIAN_ROLE can veto it;
///         claims are always against the latest accepted root (cumulative amounts make older ones useless).
///         Buyers pay in too: `deposit` credits an API key's account (prepaid metered usage) and
///         `createBounty` funds a pool for cells and epochs. Both add to `funded`, the only backing the
///         tree may have beyond the emission schedule: the cap is `epochEmission * epoch + funded` and
///         only what the total exceeds `minted + funded` is minted.
contract RewardDistributor is AccessControlDefaultAdminRules {
    using SafeERC20 for IERC20;

    bytes32 public constant REWARDS_ROLE = keccak256("REWARDS_ROLE");
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");

    IERC20 public immutable token;
    /// @notice Epoch n (from 1) covers [genesisMs + (n-1)*epochLengthMs, genesisMs + n*epochLengthMs):
    ///         the service's own numbering (ingest/core/schedule.py), so block time bounds the epoch number.
    uint64 public immutable genesisMs;
    uint64 public immutable epochLengthMs;
    /// @notice The most any one epoch may add to the supply; cumulative total <= epochEmission * epoch.
    uint256 public immutable epochEmission;
    uint64 public immutable challengeWindow; // seconds

    uint64 public latestEpoch; // latest published (pending, accepted or vetoed): epochs never repeat
    uint64 public acceptedEpoch;
    uint64 public pendingEpoch; // 0: none
    uint64 public pendingSince; // block time of the pending root's publish
    bytes32 public acceptedRoot;
    bytes32 public pendingRoot;
    uint256 public acceptedTotal;
    uint256 public pendingTotal;
    uint256 public minted; // minted to this contract so far (a vetoed root's mint stays here, unowed)
    mapping(uint64 => bytes32) public roots; // published roots (a vetoed one is deleted)
    mapping(address => uint256) public claimed;
    /// @notice Tokens paid in by buyers (deposits and bounties): the tree's backing beyond the emission.
    uint256 public funded;
    uint256 public bountyCount; // bounty ids are 1, 2, …

    uint256 public constant MAX_BOUNTY_CELLS = 64;
    uint64 public constant MAX_BOUNTY_EPOCHS = 1000;

    event EpochPublished(uint64 indexed epoch, bytes32 root, uint256 total, uint256 mintedNow);
    event RootAccepted(uint64 indexed epoch, bytes32 root, uint256 total);
    event RootVetoed(uint64 indexed epoch, bytes32 root, address guardian);
    event Claimed(address indexed account, uint64 indexed epoch, uint256 amount, uint256 cumulative);
    /// @notice `account` is keccak256 of an API key's public id (the service credits that key).
    event Deposited(bytes32 indexed account, address indexed payer, uint256 amount);
    event BountyCreated(
        uint256 indexed id, address indexed funder, uint64 startEpoch, uint64 endEpoch, uint64[] cells, uint256 amount
    );

    error EpochNotAfterLatest(uint64 epoch, uint64 latest);
    error EpochNotEnded(uint64 epoch, uint64 ended);
    error ZeroRoot();
    error TotalBelowAccepted(uint256 total, uint256 accepted);
    error CumulativeCapExceeded(uint256 total, uint256 cap);
    error EpochCapExceeded(uint256 mint, uint256 cap);
    error ChallengeWindowOpen(uint64 pendingEpoch, uint64 until);
    error NotVetoable(uint64 epoch);
    error NothingClaimable();
    error InvalidProof();
    error ZeroAddress();
    error BadSchedule();
    error ZeroAmount();
    error ZeroAccount();
    error BadBountyWindow(uint64 startEpoch, uint64 endEpoch, uint64 ended);
    error BadBountyCells(uint256 count);

    constructor(
        address admin,
        uint48 adminDelay,
        IERC20 token_,
        uint64 genesisMs_,
        uint64 epochLengthMs_,
        uint256 epochEmission_,
        uint64 challengeWindow_
    ) AccessControlDefaultAdminRules(adminDelay, admin) {
        if (address(token_) == address(0)) revert ZeroAddress();
        // The window must end before the next epoch's publish, or every publish would wait for it.
        if (epochLengthMs_ == 0 || epochEmission_ == 0 || uint256(challengeWindow_) * 1000 >= epochLengthMs_) {
            revert BadSchedule();
        }
        token = token_;
        genesisMs = genesisMs_;
        epochLengthMs = epochLengthMs_;
        epochEmission = epochEmission_;
        challengeWindow = challengeWindow_;
    }

    /// @notice Epochs whose end has passed by this block's time: the highest number publishable now.
    /// @dev Block time (Slither's low "timestamp" finding here, in publishEpoch, createBounty, claimableRoot
    ///      and _promote): a proposer can skew it by seconds, which moves an epoch's end or a window's by as
    ///      much; epochs and windows are minutes to days, and the caps hold whatever the skew.
    function endedEpochs() public view returns (uint64) {
        uint256 nowMs = block.timestamp * 1000;
        if (nowMs < genesisMs) return 0;
        return uint64((nowMs - genesisMs) / epochLengthMs);
    }

    /// @notice Publish epoch `epoch`'s root with the cumulative total of all its leaves. Epochs strictly
    ///         increase (a retried publish reverts instead of minting twice) and must have ended by block
    ///         time (a mistaken huge number is refused instead of blocking every later epoch).
    function publishEpoch(uint64 epoch, bytes32 root, uint256 total) external onlyRole(REWARDS_ROLE) {
        if (epoch <= latestEpoch) revert EpochNotAfterLatest(epoch, latestEpoch);
        uint64 ended = endedEpochs();
        if (epoch > ended) revert EpochNotEnded(epoch, ended);
        if (root == bytes32(0)) revert ZeroRoot();
        _promote();
        if (pendingEpoch != 0) revert ChallengeWindowOpen(pendingEpoch, pendingSince + challengeWindow);
        if (total < acceptedTotal) revert TotalBelowAccepted(total, acceptedTotal);
        // Buyers' funds back the tree beyond the schedule, and nothing else does.
        uint256 cap = epochEmission * epoch + funded;
        if (total > cap) revert CumulativeCapExceeded(total, cap);
        uint256 backed = minted + funded;
        uint256 mintNow = total > backed ? total - backed : 0;
        // At most one epoch's emission per epoch since the last accepted root: the unissued share of past
        // epochs cannot be minted later.
        uint256 epochCap = epochEmission * (epoch - acceptedEpoch);
        if (mintNow > epochCap) revert EpochCapExceeded(mintNow, epochCap);

        latestEpoch = epoch;
        roots[epoch] = root;
        pendingEpoch = epoch;
        pendingRoot = root;
        pendingTotal = total;
        pendingSince = uint64(block.timestamp);
        if (mintNow > 0) minted += mintNow;
        emit EpochPublished(epoch, root, total, mintNow);
        if (challengeWindow == 0) _promote();
        // The only external call, last (checks-effects-interactions): the token is ours, but still.
        if (mintNow > 0) IMintable(address(token)).mint(address(this), mintNow);
    }

    /// @notice Prepay metered API usage: `amount` tokens from the caller (approve first) credited to
    ///         `account` (keccak256 of the API key's public id). Spent usage is paid out through the roots.
    function deposit(bytes32 account, uint256 amount) external {
        if (account == bytes32(0)) revert ZeroAccount();
        if (amount == 0) revert ZeroAmount();
        funded += amount;
        emit Deposited(account, msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Fund a bounty: `amount` tokens (approve first) shared by the devices covering `cells` (H3
    ///         indexes) in epochs startEpoch..endEpoch; what no device earned goes back to the caller through
    ///         a root after the window. The window must not have ended.
    function createBounty(uint64 startEpoch, uint64 endEpoch, uint64[] calldata cells, uint256 amount)
        external
        returns (uint256 id)
    {
        if (amount == 0) revert ZeroAmount();
        uint64 ended = endedEpochs();
        if (startEpoch == 0 || endEpoch < startEpoch || endEpoch <= ended || endEpoch - startEpoch >= MAX_BOUNTY_EPOCHS)
        {
            revert BadBountyWindow(startEpoch, endEpoch, ended);
        }
        if (cells.length == 0 || cells.length > MAX_BOUNTY_CELLS) revert BadBountyCells(cells.length);
        id = ++bountyCount;
        funded += amount;
        emit BountyCreated(id, msg.sender, startEpoch, endEpoch, cells, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Drop the pending root before it becomes claimable; claims keep using the accepted one.
    function veto(uint64 epoch) external onlyRole(GUARDIAN_ROLE) {
        _promote();
        if (epoch == 0 || epoch != pendingEpoch) revert NotVetoable(epoch);
        bytes32 root = pendingRoot;
        delete roots[epoch];
        pendingEpoch = 0;
        pendingRoot = bytes32(0);
        pendingTotal = 0;
        pendingSince = 0;
        emit RootVetoed(epoch, root, msg.sender);
    }

    /// @notice The root claims are checked against now (a pending root past its window counts).
    function claimableRoot() public view returns (uint64 epoch, bytes32 root, uint256 total) {
        if (pendingEpoch != 0 && block.timestamp >= uint256(pendingSince) + challengeWindow) {
            return (pendingEpoch, pendingRoot, pendingTotal);
        }
        return (acceptedEpoch, acceptedRoot, acceptedTotal);
    }

    /// @notice Anyone may submit (e.g. a relayer paying gas); tokens always go to `account`.
    /// @return amount newly paid; 0 when the cumulative amount was already claimed.
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        _promote();
        bytes32 root = acceptedRoot;
        if (root == bytes32(0)) revert NothingClaimable();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimed[account];
        if (cumulativeAmount > already) {
            amount = cumulativeAmount - already;
            claimed[account] = cumulativeAmount;
            token.safeTransfer(account, amount);
        }
        emit Claimed(account, acceptedEpoch, amount, cumulativeAmount);
    }

    /// @dev A pending root past its challenge window becomes the accepted one (lazily, on the next call).
    function _promote() private {
        uint64 epoch = pendingEpoch;
        if (epoch == 0 || block.timestamp < uint256(pendingSince) + challengeWindow) return;
        acceptedEpoch = epoch;
        acceptedRoot = pendingRoot;
        acceptedTotal = pendingTotal;
        pendingEpoch = 0;
        pendingRoot = bytes32(0);
        pendingTotal = 0;
        pendingSince = 0;
        emit RootAccepted(epoch, acceptedRoot, acceptedTotal);
    }
}
