"""Node identity: a secp256k1 key whose Ethereum-style address is the node id.

Signatures are EIP-191 ``personal_sign`` signatures (what ``eth_account.Account.sign_message`` makes and
``recover_message`` checks), computed with coincurve directly: the same bytes, ~5x faster than going through
eth-account's object layers, which matters on the router's hot path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import coincurve
from eth_account import Account
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address

from hivemesh.errors import BadSignature


def _eip191_hash(payload: bytes) -> bytes:
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(payload)).encode() + payload)


def address_of_public_key(pub: coincurve.PublicKey) -> str:
    return to_checksum_address(keccak(pub.format(compressed=False)[1:])[-20:])


@dataclass(frozen=True)
class Identity:
    private_key: bytes
    address: str

    @classmethod
    def generate(cls) -> Identity:
        acct = Account.create()
        return cls(bytes(acct.key), acct.address)

    @classmethod
    def from_key(cls, key: bytes) -> Identity:
        return cls(key, Account.from_key(key).address)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key at ``path``, or create one there (mode 0600, written atomically)."""
        if path.exists():
            raw = path.read_text().strip()
            return cls.from_key(bytes.fromhex(raw.removeprefix("0x")))
        path.parent.mkdir(parents=True, exist_ok=True)
        ident = cls.generate()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("0x" + ident.private_key.hex() + "\n")
        os.replace(tmp, path)
        return ident

    def sign(self, payload: bytes) -> str:
        sig = coincurve.PrivateKey(self.private_key).sign_recoverable(_eip191_hash(payload), hasher=None)
        # coincurve gives r || s || v with v in {0, 1}; Ethereum uses v + 27.
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")


def recover(payload: bytes, signature: str) -> str:
    """The checksum address that signed ``payload``. Raises BadSignature if the signature is malformed."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        if len(raw) != 65 or raw[64] not in (27, 28):
            raise ValueError("bad length or v")
        pub = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes([raw[64] - 27]), _eip191_hash(payload), hasher=None
        )
    except (ValueError, TypeError, Exception) as exc:  # coincurve raises plain Exception subclasses
        raise BadSignature(f"malformed signature: {exc}") from None
    return address_of_public_key(pub)


def verify(payload: bytes, signature: str, address: str) -> None:
    """Raise BadSignature unless ``signature`` over ``payload`` was made by ``address``."""
    signer = recover(payload, signature)
    if signer.lower() != address.lower():
        raise BadSignature(f"signature by {signer}, expected {address}")
