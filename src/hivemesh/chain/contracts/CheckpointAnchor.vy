#pragma version 0.4.3
"""
@title CheckpointAnchor
@notice Anchors the off-chain ledger's signed checkpoints: the router posts the digest of each checkpoint it
        signs (its chain heads), so a history rewritten later no longer matches what the chain recorded.
"""

event Anchored:
    seq: indexed(uint256)
    digest: bytes32
    ts_us: uint256
    by: address

admin: public(address)
routers: public(HashMap[address, bool])
count: public(uint256)
latest: public(bytes32)
latest_ts_us: public(uint256)
digest_at: public(HashMap[uint256, bytes32])


@deploy
def __init__(router: address):
    self.admin = msg.sender
    self.routers[router] = True


@external
def set_router(router: address, allowed: bool):
    assert msg.sender == self.admin, "router: caller is not the admin"
    self.routers[router] = allowed


@external
def anchor(digest: bytes32, ts_us: uint256):
    assert self.routers[msg.sender], "anchor: caller is not a router"
    assert ts_us > self.latest_ts_us, "anchor: not newer than the latest checkpoint"
    self.count += 1
    self.latest = digest
    self.latest_ts_us = ts_us
    self.digest_at[self.count] = digest
    log Anchored(seq=self.count, digest=digest, ts_us=ts_us, by=msg.sender)
