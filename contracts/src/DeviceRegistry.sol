// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";

/// @title DeviceRegistry
/// @notice device_id → {pubkey, owner, hwClass, assertedCell, status, registeredAt}. Every change emits an
///         event so the ingest service can mirror the registry by replaying logs from the deployment block.
contract DeviceRegistry is AccessControlDefaultAdminRules {
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");

    uint8 public constant STATUS_NONE = 0;
    uint8 public constant STATUS_ACTIVE = 1;
    uint8 public constant STATUS_REVOKED = 2;

    struct Device {
        bytes32 pubkey;
        address owner;
        uint16 hwClass;
        uint64 assertedCell;
        uint8 status;
        uint64 registeredAt;
    }

    struct DeviceInput {
        bytes32 deviceId;
        bytes32 pubkey;
        address owner;
        uint16 hwClass;
        uint64 assertedCell;
    }

    struct HwClass {
        string name;
        uint32 maxSpeedKmh;
        uint8 h3Res;
        bool enabled;
    }

    mapping(bytes32 => Device) private _devices;
    mapping(uint16 => HwClass) private _hwClasses;

    event DeviceRegistered(
        bytes32 indexed deviceId, address indexed owner, bytes32 pubkey, uint16 hwClass, uint64 assertedCell
    );
    event DeviceRevoked(bytes32 indexed deviceId, address indexed owner);
    event KeyRotated(bytes32 indexed deviceId, address indexed owner, bytes32 newPubkey);
    event LocationSet(bytes32 indexed deviceId, address indexed owner, uint64 cell);
    event DeviceTransferred(bytes32 indexed deviceId, address indexed from, address indexed to);
    event HwClassSet(uint16 indexed id, string name, uint32 maxSpeedKmh, uint8 h3Res, bool enabled);

    error AlreadyRegistered(bytes32 deviceId);
    error UnknownDevice(bytes32 deviceId);
    error DeviceNotActive(bytes32 deviceId);
    error NotDeviceOwner(bytes32 deviceId, address caller);
    error NotOwnerOrOperator(bytes32 deviceId, address caller);
    error ZeroAddress();
    error ZeroPubkey();
    error UnknownHwClass(uint16 hwClass);
    error InvalidH3Res(uint8 h3Res);
    error MobileClassCell(uint16 hwClass);
    error InvalidCell(uint64 cell, uint8 h3Res);

    /// @dev The admin is handed over in two steps after `adminDelay` seconds (and never to address 0).
    constructor(address admin, uint48 adminDelay) AccessControlDefaultAdminRules(adminDelay, admin) {
        _grantRole(OPERATOR_ROLE, admin);
        _setHwClass(1, "dashcam", 200, 9, true);
        _setHwClass(2, "weather", 0, 7, true);
        _setHwClass(3, "air", 0, 8, true);
    }

    // ---------------------------------------------------------------- registration

    function register(bytes32 deviceId, bytes32 pubkey, address owner, uint16 hwClass, uint64 assertedCell)
        external
        onlyRole(OPERATOR_ROLE)
    {
        // Any status other than NONE reverts: a revoked id can never be reactivated.
        if (_devices[deviceId].status != STATUS_NONE) revert AlreadyRegistered(deviceId);
        _register(deviceId, pubkey, owner, hwClass, assertedCell);
    }

    /// @notice Registers many devices; ids that already exist (active or revoked) are skipped, not reverted,
    ///         so an interrupted batch job can simply be re-run. Invalid inputs still revert the whole batch.
    /// @return added the number of devices newly registered.
    function registerBatch(DeviceInput[] calldata items) external onlyRole(OPERATOR_ROLE) returns (uint256 added) {
        uint256 n = items.length;
        for (uint256 i = 0; i < n; ++i) {
            DeviceInput calldata d = items[i];
            if (_devices[d.deviceId].status != STATUS_NONE) continue;
            _register(d.deviceId, d.pubkey, d.owner, d.hwClass, d.assertedCell);
            ++added;
        }
    }

    function _register(bytes32 deviceId, bytes32 pubkey, address owner, uint16 hwClass, uint64 assertedCell)
        private
    {
        if (owner == address(0)) revert ZeroAddress();
        if (pubkey == bytes32(0)) revert ZeroPubkey();
        HwClass storage c = _hwClasses[hwClass];
        if (!c.enabled) revert UnknownHwClass(hwClass);
        _checkCell(c, hwClass, assertedCell);
        _devices[deviceId] = Device({
            pubkey: pubkey,
            owner: owner,
            hwClass: hwClass,
            assertedCell: assertedCell,
            status: STATUS_ACTIVE,
            registeredAt: uint64(block.number)
        });
        emit DeviceRegistered(deviceId, owner, pubkey, hwClass, assertedCell);
    }

    // ---------------------------------------------------------------- lifecycle

    function revoke(bytes32 deviceId) external onlyRole(OPERATOR_ROLE) {
        Device storage d = _active(deviceId);
        d.status = STATUS_REVOKED;
        emit DeviceRevoked(deviceId, d.owner);
    }

    function rotateKey(bytes32 deviceId, bytes32 newPubkey) external {
        Device storage d = _active(deviceId);
        if (msg.sender != d.owner && !hasRole(OPERATOR_ROLE, msg.sender)) {
            revert NotOwnerOrOperator(deviceId, msg.sender);
        }
        if (newPubkey == bytes32(0)) revert ZeroPubkey();
        d.pubkey = newPubkey;
        emit KeyRotated(deviceId, d.owner, newPubkey);
    }

    function setLocation(bytes32 deviceId, uint64 cell) external onlyRole(OPERATOR_ROLE) {
        Device storage d = _active(deviceId);
        _checkCell(_hwClasses[d.hwClass], d.hwClass, cell);
        d.assertedCell = cell;
        emit LocationSet(deviceId, d.owner, cell);
    }

    function transfer(bytes32 deviceId, address newOwner) external {
        Device storage d = _active(deviceId);
        if (msg.sender != d.owner) revert NotDeviceOwner(deviceId, msg.sender);
        if (newOwner == address(0)) revert ZeroAddress();
        address from = d.owner;
        d.owner = newOwner;
        emit DeviceTransferred(deviceId, from, newOwner);
    }

    /// @dev A cell is asserted only for a stationary class (max speed 0), at exactly the class's H3
    ///      resolution: a coarser cell would let a station claim any position in a region. 0 means "no
    ///      cell" (such a device earns nothing for location). Checks the H3 cell layout: bit 63 = 0,
    ///      mode (bits 59-62) = 1, bits 56-58 = 0, resolution in bits 52-55, base cell (45-51) <= 121,
    ///      and every digit below the resolution = 7.
    function _checkCell(HwClass storage c, uint16 hwClass, uint64 cell) private view {
        if (cell == 0) return;
        if (c.maxSpeedKmh != 0) revert MobileClassCell(hwClass);
        uint8 res = c.h3Res;
        uint64 unused = uint64((uint256(1) << (3 * (15 - uint256(res)))) - 1);
        if (cell >> 56 != 0x08 || (cell >> 52) & 0xF != res || (cell >> 45) & 0x7F > 121 || cell & unused != unused) {
            revert InvalidCell(cell, res);
        }
    }

    function getDevice(bytes32 deviceId) external view returns (Device memory) {
        return _devices[deviceId];
    }

    function _active(bytes32 deviceId) private view returns (Device storage d) {
        d = _devices[deviceId];
        if (d.status == STATUS_NONE) revert UnknownDevice(deviceId);
        if (d.status != STATUS_ACTIVE) revert DeviceNotActive(deviceId);
    }

    // ---------------------------------------------------------------- hardware classes

    function setHwClass(uint16 id, string calldata name, uint32 maxSpeedKmh, uint8 h3Res, bool enabled)
        external
        onlyRole(OPERATOR_ROLE)
    {
        _setHwClass(id, name, maxSpeedKmh, h3Res, enabled);
    }

    function getHwClass(uint16 id) external view returns (HwClass memory) {
        return _hwClasses[id];
    }

    function _setHwClass(uint16 id, string memory name, uint32 maxSpeedKmh, uint8 h3Res, bool enabled) private {
        if (h3Res > 15) revert InvalidH3Res(h3Res);
        _hwClasses[id] = HwClass({name: name, maxSpeedKmh: maxSpeedKmh, h3Res: h3Res, enabled: enabled});
        emit HwClassSet(id, name, maxSpeedKmh, h3Res, enabled);
    }
}
