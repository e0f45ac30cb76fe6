#pragma version 0.4.3
"""
@title SessionPayment
@notice Accounts, session escrow and batched settlement of hivemesh. Users deposit native value into their
        balance here and fund session escrows from it (themselves, or through the router they deposited with:
        a router can move an owner's balance only into that owner's own sessions). The router settles tasks
        in batches: one transaction pays many tasks' nodes and the treasury fee from their sessions' escrow
        (or from a hold reserved on chain), refunds closed sessions to their owners, pays epoch rewards from
        the reward pool and carries slashes to the NodePool. Payouts are credited to balances that their
        owners withdraw. Each batch names the router's journal cursor it continues from and the one it
        reaches, so a batch sent twice reverts instead of paying twice, and so does a task settled twice.
"""

interface NodePool:
    def slash(node: address, active: uint256, cooling: uint256, evidence: bytes32): nonpayable

MAX_ITEMS: constant(uint256) = 256
MAX_PAYOUTS: constant(uint256) = 1024

struct Fund:
    session: bytes32
    owner: address
    amount: uint256

struct Settlement:
    session: bytes32
    task: bytes32
    fee: uint256
    payouts: uint256  # how many entries of the batch's payout list are this task's (in order)

struct Payout:
    node: address
    amount: uint256

struct Reward:
    account: address
    amount: uint256

struct Slash:
    node: address
    active: uint256
    cooling: uint256
    evidence: bytes32

event Deposited:
    account: indexed(address)
    amount: uint256
    by: address

event Withdrawn:
    account: indexed(address)
    amount: uint256

event SessionFunded:
    session: indexed(bytes32)
    owner: address
    amount: uint256
    by: address

event Reserved:
    session: indexed(bytes32)
    task: indexed(bytes32)
    amount: uint256

event Settled:
    session: indexed(bytes32)
    task: indexed(bytes32)
    charged: uint256
    fee: uint256

event SessionClosed:
    session: indexed(bytes32)
    refund: uint256

event RewardPoolFunded:
    amount: uint256
    by: address

event BatchApplied:
    prev_cursor: uint256
    cursor: uint256
    settled: uint256

admin: public(address)
router: public(address)
treasury: public(address)
node_pool: public(address)
balance_of: public(HashMap[address, uint256])
escrow_of: public(HashMap[bytes32, uint256])
session_owner: public(HashMap[bytes32, address])
session_closed: public(HashMap[bytes32, bool])
held: public(HashMap[bytes32, uint256])
hold_session: public(HashMap[bytes32, bytes32])
settled: public(HashMap[bytes32, bool])
reward_pool: public(uint256)
journal_cursor: public(uint256)


@deploy
def __init__(router: address, treasury: address, node_pool: address):
    self.admin = msg.sender
    self.router = router
    self.treasury = treasury
    self.node_pool = node_pool


@external
def set_router(router: address):
    assert msg.sender == self.admin, "router: caller is not the admin"
    self.router = router


# -- money in and out -----------------------------------------------------------------------------------

@external
@payable
def deposit():
    assert msg.value > 0, "deposit: no value sent"
    self.balance_of[msg.sender] += msg.value
    log Deposited(account=msg.sender, amount=msg.value, by=msg.sender)


@external
@payable
def deposit_for(account: address):
    assert msg.value > 0, "deposit: no value sent"
    assert account != empty(address), "deposit: no account"
    self.balance_of[account] += msg.value
    log Deposited(account=account, amount=msg.value, by=msg.sender)


@external
@payable
def fund_reward_pool():
    assert msg.value > 0, "deposit: no value sent"
    self.reward_pool += msg.value
    log RewardPoolFunded(amount=msg.value, by=msg.sender)


@external
@payable
def receive_slash():
    assert msg.sender == self.node_pool, "slash: only the node pool sends slashed stake"
    self.balance_of[self.treasury] += msg.value


@external
@nonreentrant
def withdraw(amount: uint256):
    assert amount > 0, "withdraw: zero amount"
    assert amount <= self.balance_of[msg.sender], "withdraw: amount exceeds the balance"
    self.balance_of[msg.sender] -= amount
    send(msg.sender, amount)
    log Withdrawn(account=msg.sender, amount=amount)


# -- sessions --------------------------------------------------------------------------------------------

@internal
def _fund(session: bytes32, owner: address, amount: uint256):
    assert amount > 0, "fund: zero amount"
    known: address = self.session_owner[session]
    if known == empty(address):
        self.session_owner[session] = owner
    else:
        assert known == owner, "fund: the session belongs to another owner"
    assert not self.session_closed[session], "fund: the session is closed"
    assert amount <= self.balance_of[owner], "fund: amount exceeds the owner's balance"
    self.balance_of[owner] -= amount
    self.escrow_of[session] += amount
    log SessionFunded(session=session, owner=owner, amount=amount, by=msg.sender)


@external
def fund_session(session: bytes32, amount: uint256):
    """An owner moves part of its balance into a session's escrow (opening the session)."""
    self._fund(session, msg.sender, amount)


@external
def reserve(session: bytes32, task: bytes32, amount: uint256):
    """Hold part of a session's escrow for one task on chain (a settlement of the task draws on it)."""
    assert msg.sender == self.router, "reserve: caller is not the router"
    assert not self.settled[task], "reserve: task already settled"
    assert self.held[task] == 0, "reserve: task already reserved"
    assert amount > 0, "reserve: zero amount"
    assert amount <= self.escrow_of[session], "reserve: amount exceeds the session's escrow"
    self.escrow_of[session] -= amount
    self.held[task] = amount
    self.hold_session[task] = session
    log Reserved(session=session, task=task, amount=amount)


@internal
def _settle(s: Settlement, payouts: DynArray[Payout, MAX_PAYOUTS], start: uint256) -> uint256:
    assert not self.settled[s.task], "settle: task already settled"
    assert start + s.payouts <= len(payouts), "settle: payout list too short"
    total: uint256 = s.fee
    for i: uint256 in range(start, start + s.payouts, bound=MAX_PAYOUTS):
        total += payouts[i].amount
    hold: uint256 = self.held[s.task]
    if hold > 0:
        assert self.hold_session[s.task] == s.session, "settle: the hold belongs to another session"
        assert total <= hold, "settle: charge exceeds the task's hold"
        self.held[s.task] = 0
        self.escrow_of[s.session] += hold - total
    else:
        assert total <= self.escrow_of[s.session], "settle: charge exceeds the session's escrow"
        self.escrow_of[s.session] -= total
    self.settled[s.task] = True
    for i: uint256 in range(start, start + s.payouts, bound=MAX_PAYOUTS):
        self.balance_of[payouts[i].node] += payouts[i].amount
    if s.fee > 0:
        self.balance_of[self.treasury] += s.fee
    log Settled(session=s.session, task=s.task, charged=total, fee=s.fee)
    return start + s.payouts


@internal
def _close(session: bytes32) -> uint256:
    owner: address = self.session_owner[session]
    assert owner != empty(address), "close: unknown session"
    if self.session_closed[session]:
        return 0
    rest: uint256 = self.escrow_of[session]
    self.escrow_of[session] = 0
    self.session_closed[session] = True
    self.balance_of[owner] += rest
    log SessionClosed(session=session, refund=rest)
    return rest


@external
def settle(settlement: Settlement, payouts: DynArray[Payout, MAX_PAYOUTS]):
    """Settle one task outside a batch."""
    assert msg.sender == self.router, "settle: caller is not the router"
    self._settle(settlement, payouts, 0)


@external
def close_session(session: bytes32) -> uint256:
    """Refund what is left in a session's escrow to its owner's balance and close it."""
    assert msg.sender == self.router or msg.sender == self.session_owner[session], "close: caller is neither the router nor the owner"
    return self._close(session)


@external
def apply_batch(
    prev_cursor: uint256,
    cursor: uint256,
    funds: DynArray[Fund, MAX_ITEMS],
    settlements: DynArray[Settlement, MAX_ITEMS],
    payouts: DynArray[Payout, MAX_PAYOUTS],
    rewards: DynArray[Reward, MAX_ITEMS],
    closes: DynArray[bytes32, MAX_ITEMS],
    slashes: DynArray[Slash, MAX_ITEMS],
):
    """One settlement batch of the router's journal, from ``prev_cursor`` (exclusive) to ``cursor``: escrow
    fundings first, then settlements (each with its run of ``payouts``), rewards, session closes, slashes."""
    assert msg.sender == self.router, "batch: caller is not the router"
    assert prev_cursor == self.journal_cursor, "batch: stale journal cursor (already applied?)"
    assert cursor > prev_cursor, "batch: cursor does not advance"
    self.journal_cursor = cursor
    for f: Fund in funds:
        self._fund(f.session, f.owner, f.amount)
    at: uint256 = 0
    for s: Settlement in settlements:
        at = self._settle(s, payouts, at)
    assert at == len(payouts), "batch: payouts left over"
    for r: Reward in rewards:
        assert r.amount <= self.reward_pool, "reward: the reward pool is empty"
        self.reward_pool -= r.amount
        self.balance_of[r.account] += r.amount
    for c: bytes32 in closes:
        self._close(c)
    for x: Slash in slashes:
        extcall NodePool(self.node_pool).slash(x.node, x.active, x.cooling, x.evidence)
    log BatchApplied(prev_cursor=prev_cursor, cursor=cursor, settled=len(settlements))
