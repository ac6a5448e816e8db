"""The appraisal policy: what a verifier trusts and requires, loaded from YAML.

Nothing is trusted by default: `Policy.default()` accepts only TPM evidence and pins no
roots, release keys or code, so a card verifies only against a policy someone wrote on
purpose. Key material is parsed once at load time and cached on the policy, because a
service appraises many cards against one policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml
from cryptography import x509

from cards import keys, yamlload
from cards.errors import LaminateError
from verifier import predicates, tee_policy

BACKENDS = ("sim", "tpm", "tdx", "snp")
MAX_POLICY_BYTES = 1 << 20

_TOP_KEYS = {"policy_id", "allow_backends", "trusted_roots", "trusted_release_keys",
             "reference_values", "require", "ownership", "dp", "require_start",
             "require_entry_point", "verification_time", "tee"}
_SECTION_KEYS = {"reference_values": {"code", "entry_point", "libraries", "tdx", "snp"},
                 "ownership": {"alpha", "min_power"},
                 "dp": {"epsilon_tolerance", "max_delta", "max_non_dp_records", "require_tight"}}
START_KINDS = ("random", "parent", "external")
MAX_NON_DP_RECORDS = 100


@dataclass(frozen=True)
class Ownership:
    """The ownership test's false-positive bound and the power a watermark needs."""
    alpha: float = 1e-6
    min_power: float = 0.9


@dataclass(frozen=True)
class DPSettings:
    # Relative tolerance (absolute below epsilon 1) between the claimed epsilon and the
    # one the verifier recomputes; both run the same accountant, so only float noise.
    """How closely a claimed epsilon must match the recomputed one."""
    epsilon_tolerance: float = 1e-3
    # None: delta must stay below 1/records (a larger delta lets a mechanism publish a
    # record outright with that probability); a number: delta must not exceed it.
    max_delta: float | None = None
    # Training records a non-DP phase (the split watermark schedule) may touch: the
    # wrapper's split phase touches as many as there are triggers (default 100).
    max_non_dp_records: int = MAX_NON_DP_RECORDS
    require_tight: bool = False             # not-tight accounting is contraindicated


@dataclass(frozen=True)
class ReferenceValues:
    """Code identities (wrapper SHA-256 hex digests) the policy accepts."""
    code: tuple = ()
    entry_point: tuple = ()                 # SHA-256 hex of the accepted entry scripts
    libraries: dict = field(default_factory=dict)  # name -> accepted RECORD digests
    tdx: tee_policy.TdxReference = field(default_factory=tee_policy.TdxReference)
    snp: tee_policy.SnpReference = field(default_factory=tee_policy.SnpReference)


@dataclass(frozen=True, eq=False)
class Policy:
    """What a verifier trusts and requires; load() reads it from YAML, default() is
    the built-in policy (TPM evidence only, no trusted root, key or code)."""
    policy_id: str = "default"
    allow_backends: tuple = ("tpm",)
    trusted_roots: tuple = ()            # PEM bytes of trusted root certificates
    trusted_release_keys: tuple = ()     # PEM bytes of trusted release public keys
    reference_values: ReferenceValues = field(default_factory=ReferenceValues)
    require: tuple = ()                  # predicate strings, as written
    ownership: Ownership = field(default_factory=Ownership)
    dp: DPSettings = field(default_factory=DPSettings)
    require_start: tuple = START_KINDS       # start kinds accepted (claims.start.kind)
    require_entry_point: bool = False        # a card with no measured entry point fails
    tee: tee_policy.TeeSettings = field(default_factory=tee_policy.TeeSettings)
    verification_time: object = None     # fixed "now" (datetime, UTC) for offline checks
    source: str = "built-in default policy"

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy: TPM evidence only, trusting no root, release key or code."""
        return cls()

    @classmethod
    def load(cls, path) -> Policy:
        """The policy YAML at ``path``, relative paths in it taken from its folder.
        Raises LaminateError naming the file and field when the file is missing, too large,
        not YAML, or has an unknown key, a bad value or an unreadable certificate or key."""
        path = Path(path)
        if not path.is_file():
            raise LaminateError(f"{path}: policy file not found" if not path.exists()
                                else f"{path}: policy is not a regular file")
        raw = path.read_bytes()
        if len(raw) > MAX_POLICY_BYTES:
            raise LaminateError(f"{path}: policy larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = yamlload.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LaminateError(f"{path}: not valid YAML ({first})") from None
        return cls.from_mapping(doc, base_dir=path.parent, source=str(path))

    @classmethod
    def from_mapping(cls, doc, *, base_dir=".", source="policy") -> Policy:
        """Build a policy from a parsed mapping; relative key/cert paths use base_dir."""
        base_dir = Path(base_dir)

        def err(field_name, reason):
            return LaminateError(f"{source}: {field_name}: {reason}")

        if not isinstance(doc, dict):
            raise err("(top level)", "expected a mapping")
        for key in doc:
            if key not in _TOP_KEYS:
                raise err(str(key), f"unknown policy key (known: {', '.join(sorted(_TOP_KEYS))})")
        for section, known in _SECTION_KEYS.items():
            value = doc.get(section)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise err(section, "expected a mapping")
            for key in value:
                if key not in known:
                    raise err(f"{section}.{key}", "unknown policy key "
                              f"(known: {', '.join(sorted(known))})")

        policy_id = doc.get("policy_id", Path(source).stem)
        if not isinstance(policy_id, str) or not policy_id:
            raise err("policy_id", "expected a non-empty string")
        backends = _str_list(doc.get("allow_backends", ["tpm"]), "allow_backends", err)
        for b in backends:
            if b not in BACKENDS:
                raise err("allow_backends", f"unknown backend {b!r} (known: {', '.join(BACKENDS)})")

        roots = tuple(_load_pem(item, base_dir, f"trusted_roots[{i}]", err, _check_cert)
                      for i, item in enumerate(_str_list(doc.get("trusted_roots", []),
                                                         "trusted_roots", err)))
        rkeys = tuple(_load_pem(item, base_dir, f"trusted_release_keys[{i}]", err, _check_key)
                      for i, item in enumerate(_str_list(doc.get("trusted_release_keys", []),
                                                         "trusted_release_keys", err)))
        ref = doc.get("reference_values") or {}
        code = _digests(ref.get("code", []), "reference_values.code", err)
        entry = _digests(ref.get("entry_point", []), "reference_values.entry_point", err)
        libs = ref.get("libraries") or {}
        if not isinstance(libs, dict) or not all(isinstance(k, str) for k in libs):
            raise err("reference_values.libraries", "expected a mapping of library name to "
                      "a list of RECORD digests")
        libraries = {name: _digests(value, f"reference_values.libraries.{name}", err)
                     for name, value in libs.items()}
        kinds = tuple(_str_list(doc.get("require_start", list(START_KINDS)), "require_start", err))
        for kind in kinds:
            if kind not in START_KINDS:
                raise err("require_start", f"unknown start kind {kind!r} "
                          f"(known: {', '.join(START_KINDS)})")
        require_entry = doc.get("require_entry_point", False)
        if not isinstance(require_entry, bool):
            raise err("require_entry_point", "expected true or false")
        tdx_ref, snp_ref = tee_policy.parse_references(ref, err)

        require = []
        for i, text in enumerate(_str_list(doc.get("require", []), "require", err)):
            try:
                require.append(predicates.parse(text).text)
            except predicates.PredicateError as exc:
                raise err(f"require[{i}]", str(exc)) from None

        own = doc.get("ownership") or {}
        ownership = Ownership(
            alpha=_number(own.get("alpha", Ownership.alpha), "ownership.alpha", err, 0, 1, open_low=True),
            min_power=_number(own.get("min_power", Ownership.min_power), "ownership.min_power", err, 0, 1))
        dp = doc.get("dp") or {}
        max_delta = dp.get("max_delta")
        max_records = dp.get("max_non_dp_records", MAX_NON_DP_RECORDS)
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 0:
            raise err("dp.max_non_dp_records", f"expected a non-negative integer, got {max_records!r}")
        if not isinstance(dp.get("require_tight", False), bool):
            raise err("dp.require_tight", "expected true or false")
        dp_settings = DPSettings(
            epsilon_tolerance=_number(dp.get("epsilon_tolerance", DPSettings.epsilon_tolerance),
                                      "dp.epsilon_tolerance", err, 0, 1),
            max_delta=None if max_delta is None else _number(max_delta, "dp.max_delta", err, 0, 1,
                                                             open_low=True),
            max_non_dp_records=max_records, require_tight=dp.get("require_tight", False))

        return cls(policy_id=policy_id, allow_backends=tuple(backends), trusted_roots=roots,
                   trusted_release_keys=rkeys,
                   reference_values=ReferenceValues(tuple(code), tuple(entry), libraries,
                                                    tdx_ref, snp_ref),
                   require=tuple(require), ownership=ownership, dp=dp_settings,
                   require_start=kinds, require_entry_point=require_entry,
                   tee=tee_policy.parse_tee(doc, err),
                   verification_time=tee_policy.parse_time(doc.get("verification_time"), err),
                   source=source)

    @cached_property
    def root_certificates(self) -> tuple:
        """Parsed trusted roots (x509.Certificate)."""
        return tuple(x509.load_pem_x509_certificate(pem) for pem in self.trusted_roots)

    @cached_property
    def root_ders(self) -> frozenset:
        """DER bytes of the trusted roots: a chain ends in one of these, byte for byte."""
        from cryptography.hazmat.primitives.serialization import Encoding
        return frozenset(c.public_bytes(Encoding.DER) for c in self.root_certificates)

    @cached_property
    def release_keys(self) -> dict:
        """kid (SHA-256 of SPKI DER) -> public key, for a direct lookup by the card's kid."""
        loaded = (keys.load_public_key(pem) for pem in self.trusted_release_keys)
        return {keys.key_id(k): k for k in loaded}

    @cached_property
    def predicates(self) -> tuple:
        """The parsed ``require`` predicates, in the order written."""
        return tuple(predicates.parse(text) for text in self.require)

    @cached_property
    def cache(self) -> dict:
        """Per-policy memo for results that depend only on the policy and exact input bytes
        (a certificate chain already validated against these roots)."""
        return {}


def _digests(value, name, err) -> tuple:
    """A list of SHA-256 hex digests, lowercased."""
    out = []
    for i, item in enumerate(_str_list(value, name, err)):
        digest = item.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise err(f"{name}[{i}]", "expected a SHA-256 hex digest (64 hex digits)")
        out.append(digest)
    return tuple(out)


def _str_list(value, name, err) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise err(name, "expected a list of strings")
    return value


def _number(value, name, err, low, high, open_low=False) -> float:
    # YAML 1.1 reads `1e-6` (no dot) as a string; accept it as the number it means.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise err(name, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise err(name, f"expected a number, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        raise err(name, f"must be in {'(' if open_low else '['}{low}, {high}], got {value}")
    return float(value)


def _load_pem(item, base_dir, name, err, check) -> bytes:
    """An entry is inline PEM text or a path relative to the policy file."""
    if item.lstrip().startswith("-----BEGIN"):
        pem = item.encode()
    else:
        path = base_dir / item
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise err(name, f"file {path} not found") from None
        except OSError as exc:
            raise err(name, f"cannot read {path}: {exc.strerror}") from None
    try:
        check(pem)
    except (ValueError, TypeError, LaminateError) as exc:
        raise err(name, f"not a PEM {'certificate' if check is _check_cert else 'public key'} "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return pem


def _check_cert(pem: bytes) -> None:
    x509.load_pem_x509_certificate(pem)


def _check_key(pem: bytes) -> None:
    keys.load_public_key(pem)
