"""Accounts: users, organizations and their members, tokens, and who may write where.

Tokens are stored as their sha256 only. A token's *id* is the first :data:`TOKEN_ID_CHARS`
characters of that hash: enough to name it when revoking, useless to sign in with.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import string

from .database import Database, delete_repo_rows, now_iso
from .errors import ApiError, bad_request, repo_not_found
from .records import Repo, repo_from_row
from .validate import check_account_name

#: Length of a token's id (a prefix of its stored sha256), shown by ``tunekit hub token list``.
TOKEN_ID_CHARS = 12


def hash_token(token: str) -> str:
    """Tokens are stored as their sha256 only; a leaked database gives no usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


class AccountStore(Database):
    """Users, orgs and tokens of one hub data dir (part of :class:`.storage.HubStore`)."""

    def add_user(self, name: str) -> str:
        """Create user ``name`` if needed and issue a new token for it.

        Returns:
            The token, in clear; only its hash is kept.

        Raises:
            ApiError: 400 for a bad name, 409 if ``name`` is an org.
        """
        check_account_name(name, "user name")
        token = _new_token()
        with self.write() as db:
            _refuse_case_twin(db, name)
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO accounts VALUES (?, 'user', ?)", (name, now_iso()))
            elif row["kind"] != "user":
                raise ApiError(409, f"{name!r} is an organization, not a user")
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), name, now_iso()))
        return token

    def add_org(self, name: str, members: list[str]) -> None:
        """Create org ``name`` if needed and add existing users to it.

        Raises:
            ApiError: 400 for a bad name or an unknown member, 409 if ``name`` is a user.
        """
        check_account_name(name, "organization name")
        with self.write() as db:
            _refuse_case_twin(db, name)
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO accounts VALUES (?, 'org', ?)", (name, now_iso()))
            elif row["kind"] != "org":
                raise ApiError(409, f"{name!r} is a user, not an organization")
            for user in members:
                kind = db.execute("SELECT kind FROM accounts WHERE name = ?", (user,)).fetchone()
                if kind is None or kind["kind"] != "user":
                    raise bad_request(f"Unknown user {user!r}: add it first")
                db.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (name, user))

    def list_tokens(self, user: str) -> list[tuple[str, str]]:
        """``(token id, created_at)`` of each token of ``user``, oldest first.

        Raises:
            ApiError: 404 when ``user`` is not a user.
        """
        with self.read() as db:
            _require_user(db, user)
            rows = db.execute(
                "SELECT token_hash, created_at FROM tokens WHERE user = ? ORDER BY created_at",
                (user,),
            )
            return [(r["token_hash"][:TOKEN_ID_CHARS], r["created_at"]) for r in rows]

    def revoke_token(self, token_or_id: str) -> str:
        """Delete one token, given in clear or by its id (``list_tokens``); it is refused (401)
        from the next request on, since every request looks its token up here.

        Returns:
            The user the token belonged to.

        Raises:
            ApiError: 404 when no token matches (or an id matches several).
        """
        with self.write() as db:
            row = db.execute(
                "SELECT token_hash, user FROM tokens WHERE token_hash = ?",
                (hash_token(token_or_id),),
            ).fetchone()
            if row is None and len(token_or_id) == TOKEN_ID_CHARS:
                rows = db.execute(
                    "SELECT token_hash, user FROM tokens WHERE substr(token_hash, 1, ?) = ?",
                    (TOKEN_ID_CHARS, token_or_id.lower()),
                ).fetchall()
                row = rows[0] if len(rows) == 1 else None
            if row is None:
                raise ApiError(
                    404,
                    "No such token: pass the token itself or its id from `tunekit hub token list`",
                )
            db.execute("DELETE FROM tokens WHERE token_hash = ?", (row["token_hash"],))
            return row["user"]

    def rotate_tokens(self, user: str) -> str:
        """Revoke every token of ``user`` and issue one new token, in one transaction.

        Returns:
            The new token, in clear.

        Raises:
            ApiError: 404 when ``user`` is not a user.
        """
        token = _new_token()
        with self.write() as db:
            _require_user(db, user)
            db.execute("DELETE FROM tokens WHERE user = ?", (user,))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), user, now_iso()))
        return token

    def remove_user(self, name: str, *, delete_repos: bool = False) -> list[str]:
        """Delete user ``name``: their tokens (refused at once), org memberships and account.

        A user who still owns repos is kept unless ``delete_repos``: a user created later under
        the same name would otherwise inherit the private repos.

        Returns:
            The ids of the repos deleted with the user.

        Raises:
            ApiError: 404 when ``name`` is not a user, 409 when they own repos and
                ``delete_repos`` is false.
        """
        with self.write() as db:
            _require_user(db, name)
            rows = db.execute("SELECT * FROM repos WHERE namespace = ?", (name,))
            repos = [repo_from_row(r) for r in rows]
            if repos and not delete_repos:
                listed = ", ".join(sorted(f"{r.type} {r.repo_id}" for r in repos))
                raise ApiError(
                    409,
                    f"User {name!r} still owns {len(repos)} repo(s) ({listed}): move or delete them"
                    " first, or pass --delete-repos",
                )
            for repo in repos:
                delete_repo_rows(db, repo)
            db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            db.execute("DELETE FROM members WHERE user = ?", (name,))
            db.execute("DELETE FROM accounts WHERE name = ?", (name,))
        return [r.repo_id for r in repos]

    def remove_member(self, org: str, user: str) -> None:
        """Take ``user`` out of ``org``: from the next request on they can neither read the
        org's private repos nor write any of its repos (a commit in flight is refused too).

        Raises:
            ApiError: 404 when ``user`` is not a member of ``org``.
        """
        with self.write() as db:
            cur = db.execute("DELETE FROM members WHERE org = ? AND user = ?", (org, user))
            if cur.rowcount == 0:
                raise ApiError(404, f"{user!r} is not a member of organization {org!r}")

    def user_for_token(self, token: str) -> str | None:
        """The user a token belongs to, or ``None`` for an unknown token."""
        with self.read() as db:
            row = db.execute(
                "SELECT user FROM tokens WHERE token_hash = ?", (hash_token(token),)
            ).fetchone()
        return row["user"] if row else None

    def orgs_of(self, user: str) -> list[str]:
        """Names of the orgs ``user`` belongs to."""
        with self.read() as db:
            rows = db.execute("SELECT org FROM members WHERE user = ? ORDER BY org", (user,))
            return [r["org"] for r in rows]

    def account_kind(self, name: str) -> str | None:
        """``"user"``, ``"org"`` or ``None`` when no such account exists."""
        with self.read() as db:
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
        return row["kind"] if row else None


def writable_pk(db: sqlite3.Connection, repo: Repo, author: str) -> int:
    """The row id of ``repo`` now, if it still exists and ``author`` may still write it.

    Raises:
        ApiError: 404 ``RepoNotFound`` when the repo is gone, 403 when ``author`` may not write.
    """
    row = db.execute("SELECT pk, namespace FROM repos WHERE uid = ?", (repo.uid,)).fetchone()
    if row is None:
        raise repo_not_found(repo.repo_id)
    namespace = row["namespace"]
    is_user = db.execute(
        "SELECT 1 FROM accounts WHERE name = ? AND kind = 'user'", (author,)
    ).fetchone()
    member = db.execute(
        "SELECT 1 FROM members WHERE org = ? AND user = ?", (namespace, author)
    ).fetchone()
    if not is_user or (namespace != author and not member):
        raise ApiError(403, f"You don't have write access to {repo.repo_id}")
    return row["pk"]


def owns(db: sqlite3.Connection, user: str, namespace: str) -> bool:
    """Whether ``user`` may create repos under ``namespace``: their own, or an org of theirs."""
    if namespace == user:
        return True
    member = db.execute(
        "SELECT 1 FROM members WHERE org = ? AND user = ?", (namespace, user)
    ).fetchone()
    return member is not None


def _require_user(db: sqlite3.Connection, name: str) -> None:
    row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None or row["kind"] != "user":
        raise ApiError(404, f"No user {name!r} on this hub")


def _refuse_case_twin(db: sqlite3.Connection, name: str) -> None:
    twin = db.execute(
        "SELECT name FROM accounts WHERE lower(name) = lower(?) AND name != ?", (name, name)
    ).fetchone()
    if twin is not None:
        raise bad_request(
            f"Invalid name {name!r}: account {twin['name']!r} exists and differs only in letter"
            " case; choose another name"
        )
