#pragma version 0.4.3
"""
@title NodePool
@notice Stake pools of the hivemesh node pool: a node stakes native value for a pool whose minimum it must
        meet, registers to serve, requests an unstake (the stake leaves the pool at once but stays slashable
        through a cooldown) and takes it back after the cooldown. Validators (an allow-list kept by the admin;
        the SessionPayment contract is one, so a router's settlement batch can carry slashes) slash stake on
        proof, naming the evidence hash of the fraud proof. Slashed value goes to the treasury account of the
        SessionPayment contract.
"""

interface Treasury:
    def receive_slash(): payable

event Staked:
    node: indexed(address)
    pool: uint256
    amount: uint256
    total: uint256
    by: address

event Registered:
    node: indexed(address)
    pool: uint256

event Unregistered:
    node: indexed(address)

event UnstakeRequested:
    node: indexed(address)
    amount: uint256
    available_at: uint256

event Unstaked:
    node: indexed(address)
    amount: uint256

event Slashed:
    node: indexed(address)
    active: uint256
    cooling: uint256
    evidence: bytes32
    by: address

event PoolSet:
    pool: uint256
    minimum: uint256

event ValidatorSet:
    validator: indexed(address)
    allowed: bool

admin: public(address)
treasury: public(address)
cooldown: public(uint256)
validators: public(HashMap[address, bool])
pool_exists: public(HashMap[uint256, bool])
pool_minimum: public(HashMap[uint256, uint256])
stake_of: public(HashMap[address, uint256])
unstaking_of: public(HashMap[address, uint256])
unstake_available_at: public(HashMap[address, uint256])
pool_of: public(HashMap[address, uint256])
registered: public(HashMap[address, bool])


@deploy
def __init__(cooldown: uint256):
    self.admin = msg.sender
    self.cooldown = cooldown
    self.pool_exists[0] = True
    log PoolSet(pool=0, minimum=0)


@external
def set_pool(pool: uint256, minimum: uint256):
    assert msg.sender == self.admin, "pool: caller is not the admin"
    self.pool_exists[pool] = True
    self.pool_minimum[pool] = minimum
    log PoolSet(pool=pool, minimum=minimum)


@external
def set_validator(validator: address, allowed: bool):
    assert msg.sender == self.admin, "validator: caller is not the admin"
    self.validators[validator] = allowed
    log ValidatorSet(validator=validator, allowed=allowed)


@external
def set_treasury(treasury: address):
    assert msg.sender == self.admin, "treasury: caller is not the admin"
    self.treasury = treasury


@internal
def _stake(node: address, pool: uint256, amount: uint256):
    assert amount > 0, "stake: no value sent"
    assert self.pool_exists[pool], "stake: unknown pool"
    total: uint256 = self.stake_of[node] + amount
    assert total >= self.pool_minimum[pool], "stake: below the pool's minimum stake"
    if self.registered[node] and self.pool_of[node] != pool:
        self.registered[node] = False
        log Unregistered(node=node)
    self.stake_of[node] = total
    self.pool_of[node] = pool
    log Staked(node=node, pool=pool, amount=amount, total=total, by=msg.sender)


@external
@payable
def stake(pool: uint256):
    """Stake the value sent for ``pool``; the node's total active stake must meet the pool's minimum."""
    self._stake(msg.sender, pool, msg.value)


@external
@payable
def stake_for(node: address, pool: uint256):
    """Anyone may add stake for a node; only the node can take it back."""
    self._stake(node, pool, msg.value)


@external
def register():
    assert self.stake_of[msg.sender] >= self.pool_minimum[self.pool_of[msg.sender]], "register: stake below the pool's minimum"
    assert self.stake_of[msg.sender] > 0, "register: nothing staked"
    self.registered[msg.sender] = True
    log Registered(node=msg.sender, pool=self.pool_of[msg.sender])


@external
def unregister():
    assert self.registered[msg.sender], "unregister: not registered"
    self.registered[msg.sender] = False
    log Unregistered(node=msg.sender)


@external
def request_unstake(amount: uint256):
    """Move ``amount`` of active stake into the cooldown (a new request restarts it for all of it)."""
    assert amount > 0, "unstake: zero amount"
    assert amount <= self.stake_of[msg.sender], "unstake: amount exceeds the active stake"
    self.stake_of[msg.sender] -= amount
    self.unstaking_of[msg.sender] += amount
    self.unstake_available_at[msg.sender] = block.timestamp + self.cooldown
    if self.registered[msg.sender] and self.stake_of[msg.sender] < self.pool_minimum[self.pool_of[msg.sender]]:
        self.registered[msg.sender] = False
        log Unregistered(node=msg.sender)
    log UnstakeRequested(node=msg.sender, amount=amount, available_at=block.timestamp + self.cooldown)


@external
@nonreentrant
def complete_unstake():
    """Send stake whose cooldown has ended back to the node."""
    amount: uint256 = self.unstaking_of[msg.sender]
    assert amount > 0, "unstake: nothing in cooldown"
    assert block.timestamp >= self.unstake_available_at[msg.sender], "unstake: cooldown not over"
    self.unstaking_of[msg.sender] = 0
    self.unstake_available_at[msg.sender] = 0
    send(msg.sender, amount)
    log Unstaked(node=msg.sender, amount=amount)


@external
@nonreentrant
def slash(node: address, active: uint256, cooling: uint256, evidence: bytes32):
    """Take ``active`` of the node's active stake and ``cooling`` of its stake in cooldown, on the proof whose
    hash is ``evidence``; the value goes to the treasury."""
    assert self.validators[msg.sender], "slash: caller is not a validator"
    assert active <= self.stake_of[node], "slash: more than the node's active stake"
    assert cooling <= self.unstaking_of[node], "slash: more than the node's stake in cooldown"
    assert self.treasury != empty(address), "slash: no treasury set"
    self.stake_of[node] -= active
    self.unstaking_of[node] -= cooling
    log Slashed(node=node, active=active, cooling=cooling, evidence=evidence, by=msg.sender)
    if active + cooling > 0:
        extcall Treasury(self.treasury).receive_slash(value=active + cooling)
