"""Storage for the card service: one SQLAlchemy schema for SQLite and PostgreSQL.

Every write that touches the log runs in one transaction that first takes the log's
write lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE`` on the
single log-head row), so several app processes on one database append one after another
and never fork the log, and a crash leaves either the whole registration or none of it.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cards.errors import LaminateError

DEFAULT_DATABASE_URL = "sqlite:///./laminate.sqlite"


class Base(DeclarativeBase):
    pass


class LogHead(Base):
    """The single row every appender locks; ``size`` counts committed leaves."""
    __tablename__ = "laminate_log_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)


class LogEntry(Base):
    __tablename__ = "laminate_log_entries"
    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    ref: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    logged_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)


class TileRow(Base):
    """The log's tree as tiles of up to 256 hashes: level 0 holds leaf hashes, level L
    the roots of 256**L-leaf subtrees. A row holds the tile's bytes at the current tree
    size; a smaller width is a prefix, so old tree sizes read the same rows."""
    __tablename__ = "laminate_tiles"
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class CardRow(Base):
    __tablename__ = "laminate_cards"
    card_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    card_bytes: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), unique=True, nullable=False)
    model_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    commitment: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    appraisal_json: Mapped[str] = mapped_column(Text, nullable=False)


class CommitmentRow(Base):
    """First log index of each watermark commitment (what disputes are ordered by)."""
    __tablename__ = "laminate_commitments"
    commitment: Mapped[str] = mapped_column(String(64), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), nullable=False)


class ModelRow(Base):
    """First log index at which a model digest was registered (in a card) or submitted."""
    __tablename__ = "laminate_models"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)


class EndpointRow(Base):
    """First log index at which a prediction URL was queried as a suspect. A URL is its
    own suspect identity: answering over HTTP proves nothing about which model file
    sits behind it, so it is never identified with a logged model digest."""
    __tablename__ = "laminate_endpoints"
    url_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), nullable=False)


class DeviceClockRow(Base):
    """The latest TPM clock seen for each attesting device in a registered card's quote
    (resetCount, restartCount and clock must never go back across its quotes)."""
    __tablename__ = "laminate_device_clocks"
    device: Mapped[str] = mapped_column(String(128), primary_key=True)
    clock: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reset_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    restart_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), nullable=False)


class DisputeRow(Base):
    __tablename__ = "laminate_disputes"
    dispute_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("laminate_log_entries.leaf_index"), unique=True, nullable=False)
    verdict_json: Mapped[str] = mapped_column(Text, nullable=False)
    signed_verdict: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class ApiToken(Base):
    """Only the SHA-256 of a token is stored, so a database leak reveals no credential."""
    __tablename__ = "laminate_api_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Database:
    """Two engines on one URL: ``reader`` for plain reads, ``writer`` for log appends."""
    url: str
    reader: Engine
    writer: Engine
    # Writers of one process queue here rather than in the database's lock, whose
    # busy-wait backs off far longer than a registration takes.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Tile reads for proofs: one statement per proof, so on PostgreSQL no pre-ping and
    # no transaction around it (each would be one more round trip).
    tile_reader: Engine | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        database = make_url(self.url).database
        return Path(database).resolve() if database and database != ":memory:" else None

    @contextlib.contextmanager
    def read(self):
        with Session(self.reader, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self):
        """A transaction holding the log's write lock; commits on success, rolls back
        on any exception. Nothing is acknowledged before this block has committed."""
        with self.write_lock, Session(self.writer, expire_on_commit=False) as session:
            with session.begin():
                head = session.execute(
                    select(LogHead).where(LogHead.id == 1).with_for_update()).scalar_one()
                yield session, head

    def dispose(self) -> None:
        self.reader.dispose()
        self.writer.dispose()
        if self.tile_reader is not None:
            self.tile_reader.dispose()


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit
        # transactions cannot take the write lock up front).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def open_database(url: str | None = None) -> Database:
    """Connect, create the tables if missing and make sure the log-head row exists."""
    url = url or DEFAULT_DATABASE_URL
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LaminateError(f"--database {url!r}: not a database URL "
                            "(e.g. sqlite:///./laminate.sqlite or "
                            "postgresql+psycopg://user@host/db)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        db = Database(url, _sqlite_engine(url, immediate=False), _sqlite_engine(url, immediate=True))
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except Exception as exc:  # missing driver, bad options: a user error
            raise LaminateError(f"--database {parsed.render_as_string()}: {exc}") from None
        db = Database(url, engine, engine,
                      tile_reader=create_engine(url, pool_size=5, max_overflow=20,
                                                isolation_level="AUTOCOMMIT"))
    try:
        _create_schema(db)
    except OperationalError as exc:
        raise LaminateError(f"--database {parsed.render_as_string()}: cannot connect: "
                            f"{' '.join(str(exc.orig).split())}") from None
    return db


def _create_schema(db: Database) -> None:
    with db.writer.connect() as conn:
        with conn.begin():
            if not db.is_sqlite:
                # Several processes may start at once on an empty database.
                conn.execute(text("SELECT pg_advisory_xact_lock(7161903)"))
            Base.metadata.create_all(conn)
            if conn.execute(select(LogHead.id).where(LogHead.id == 1)).first() is None:
                conn.execute(LogHead.__table__.insert().values(id=1, size=0))
