"""The hub's security items of issue 17, each against a real server on loopback with the real
client (``huggingface_hub``) or hand-made requests (``http.client``, raw sockets)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from hub_fixtures import HubServer, free_port, hub  # noqa: F401  (fixture)
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def raw(hub, method: str, path: str, body: bytes = b"", headers: dict | None = None, token=None):
    """Send a request byte for byte; returns (response, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.server.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
    sent = {"Authorization": f"Bearer {token or hub.token}", **(headers or {})}
    for k, v in sent.items():
        if v is not None:
            conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def lfs_line(path: str, data: bytes) -> dict:
    oid = hashlib.sha256(data).hexdigest()
    return {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": len(data)}}


def commit(hub, repo_id: str, *ops: dict, token=None):
    body = ndjson({"key": "header", "value": {"summary": "c"}}, *ops)
    return raw(hub, "POST", f"/api/models/{repo_id}/commit/main", body, token=token)


def batch(hub, repo_id: str, data: bytes, token=None, headers=None) -> dict:
    oid = hashlib.sha256(data).hexdigest()
    req = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
    resp, body = raw(hub, "POST", f"/{repo_id}.git/info/lfs/objects/batch", json.dumps(req).encode(),
                     {"Content-Type": "application/vnd.git-lfs+json", **(headers or {})}, token=token)
    assert resp.status == 200, body
    return json.loads(body)["objects"][0]


def readme_line(text: str) -> dict:
    content = base64.b64encode(text.encode()).decode()
    return {"key": "file", "value": {"path": "README.md", "content": content, "encoding": "base64"}}


@pytest.fixture(scope="module")
def bob(hub) -> str:
    return hub.add_user("bob")


def new_repo(api: HfApi, owner: str, **kwargs) -> str:
    repo_id = f"{owner}/r-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, **kwargs)
    return repo_id


# --- 1. a sha256 is no key to another repo's blob ---------------------------------------------


def test_lfs_oid_of_another_repo_cannot_be_committed_or_probed(hub, bob, tmp_path):
    secret = b"\0alice's private weights " + os.urandom(4096)
    alice_repo = new_repo(hub.api, "alice", private=True)
    hub.api.upload_file(path_or_fileobj=secret, path_in_repo="w.safetensors", repo_id=alice_repo)
    bob_api = HfApi(endpoint=hub.url, token=bob)
    bob_repo = new_repo(bob_api, "bob")

    # The batch answer does not say "already stored": bob is asked to upload it himself.
    assert "actions" in batch(hub, bob_repo, secret, token=bob)
    oid = hashlib.sha256(secret).hexdigest()
    resp, _ = raw(hub, "POST", f"/{bob_repo}.git/info/lfs/objects/verify",
                  json.dumps({"oid": oid, "size": len(secret)}).encode(), token=bob)
    assert resp.status == 404
    # A commit pointing at the oid is refused, and with the same words as for an unknown oid.
    resp, body = commit(hub, bob_repo, lfs_line("stolen.bin", secret), token=bob)
    unknown = commit(hub, bob_repo, lfs_line("x.bin", b"never uploaded"), token=bob)
    assert resp.status == 400 == unknown[0].status
    assert b"was not uploaded to this repo" in body and b"was not uploaded to this repo" in unknown[1]
    # Still refused once alice's repo is deleted.
    hub.api.delete_repo(alice_repo)
    assert commit(hub, bob_repo, lfs_line("stolen.bin", secret), token=bob)[0].status == 400
    assert "stolen.bin" not in bob_api.list_repo_files(bob_repo)

    # Holding the content is what counts: the real client uploads it and the commit lands.
    bob_api.upload_file(path_or_fileobj=secret, path_in_repo="mine.safetensors", repo_id=bob_repo)
    assert "mine.safetensors" in bob_api.list_repo_files(bob_repo)
    # And afterwards the batch answer for bob's repo is "already stored".
    assert "actions" not in batch(hub, bob_repo, secret, token=bob)


def test_oid_in_a_readable_repo_can_be_referenced(hub, bob):
    shared = b"\0public weights " + os.urandom(2048)
    public_repo = new_repo(hub.api, "alice")
    hub.api.upload_file(path_or_fileobj=shared, path_in_repo="w.safetensors", repo_id=public_repo)
    bob_repo = new_repo(HfApi(endpoint=hub.url, token=bob), "bob")
    assert commit(hub, bob_repo, lfs_line("copy.safetensors", shared), token=bob)[0].status == 200
    # An upload someone began but never committed is in no tree: not referenceable.
    pending = b"\0pending " + os.urandom(512)
    obj = batch(hub, public_repo, pending)
    assert raw(hub, "PUT", obj["actions"]["upload"]["href"][len(hub.url):], pending)[0].status == 200
    assert commit(hub, bob_repo, lfs_line("p.bin", pending), token=bob)[0].status == 400
    assert commit(hub, public_repo, lfs_line("p.bin", pending))[0].status == 200


def test_signed_upload_url_is_bound_to_its_repo(hub):
    data = b"\0bound " + os.urandom(256)
    repo_a, repo_b = new_repo(hub.api, "alice"), new_repo(hub.api, "alice")
    href = batch(hub, repo_a, data)["actions"]["upload"]["href"][len(hub.url):]
    uid_b = batch(hub, repo_b, data)["actions"]["upload"]["href"].split("repo=")[1].split("&")[0]
    forged = href.split("repo=")[0] + f"repo={uid_b}&" + href.split("&", 1)[1]
    assert raw(hub, "PUT", forged, data)[0].status == 403


# --- 2. cards are parsed with bounds; a bad card breaks nothing -------------------------------

ALIAS_BOMB = "\n".join(
    ["---", 'a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(7)]
    + ["---", "body"]
)
SELF_REFERENCE = "---\na: &a [*a]\n---\n"
TOO_DEEP = "---\nx: " + "[" * 5000 + "]" * 5000 + "\n---\n"
NOT_JSON = "---\nscore: .nan\nwhen: 2024-01-01\n1: one\n---\n"


@pytest.mark.parametrize("card", [ALIAS_BOMB, SELF_REFERENCE, TOO_DEEP], ids=["bomb", "self", "deep"])
def test_bad_card_shows_empty_card_data_and_listing_works(hub, card):
    repo_id = new_repo(hub.api, "alice")
    # Committed by hand: the real client checks cards with /api/validate-yaml first, an attacker
    # does not.
    assert commit(hub, repo_id, readme_line(card))[0].status == 200
    started = time.monotonic()
    resp = httpx.get(f"{hub.url}/api/models/{repo_id}", timeout=30)
    assert resp.status_code == 200 and len(resp.content) < 100_000
    assert resp.json()["cardData"] == {}
    listed = httpx.get(f"{hub.url}/api/models", params={"author": "alice", "full": "1"}, timeout=30)
    assert listed.status_code == 200
    assert any(m["id"] == repo_id and m["cardData"] == {} for m in listed.json())
    assert time.monotonic() - started < 10
    assert not hub.api.model_info(repo_id).card_data  # the real client reads it too


def test_card_values_json_cannot_carry_become_strings(hub):
    repo_id = new_repo(hub.api, "alice")
    assert commit(hub, repo_id, readme_line(NOT_JSON))[0].status == 200
    card = httpx.get(f"{hub.url}/api/models/{repo_id}", timeout=30).json()["cardData"]
    assert card == {"score": "nan", "when": "2024-01-01", "1": "one"}
    resp, body = raw(hub, "POST", "/api/validate-yaml", json.dumps({"content": ALIAS_BOMB}).encode())
    assert resp.status == 400 and b"expands to more than" in body


# --- 4. the token is checked, and the size bounded, before the body is read -------------------


def _answer_before_body(hub, path: str, token: str | None, announced: int = 300 * 1024 * 1024,
                        method: str = "POST") -> bytes:
    """Send headers announcing a big body and only 64 KiB of it; return the status line the
    server answers with meanwhile (a server that reads the body first never answers)."""
    with socket.create_connection(("127.0.0.1", hub.server.port), timeout=10) as s:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        ctype = "application/x-www-form-urlencoded" if "paths-info" in path else "application/json"
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {ctype}\r\n"
                  f"Content-Length: {announced}\r\n\r\n".encode() + b"{" * 65536)
        try:
            return s.recv(100).split(b"\r\n")[0]
        except socket.timeout:
            return b"(no answer within 10 s: the server is waiting for the body)"


@pytest.mark.parametrize(
    "path",
    ["/api/repos/create", "/api/models/alice/x/preupload/main", "/api/models/alice/x/paths-info/main",
     "/alice/x.git/info/lfs/objects/batch", "/api/models/alice/x/settings", "/api/validate-yaml"],
)
def test_bad_token_and_anonymous_bodies_are_not_read(hub, path):
    method = "PUT" if path.endswith("/settings") else "POST"
    assert b" 401 " in _answer_before_body(hub, path, "hf_" + "x" * 34, method=method)
    if path != "/api/validate-yaml":  # the one body anonymous callers may send (bounded below)
        answer = _answer_before_body(hub, path, None, method=method)
        assert answer.split(b" ")[1] in (b"401", b"404"), answer


@pytest.mark.parametrize("path", ["/api/repos/create", "/api/validate-yaml", "/api/models/alice/x/commit/main"])
def test_oversized_bodies_get_413_before_they_are_read(hub, path):
    repo_id = new_repo(hub.api, "alice")
    path = path.replace("alice/x", repo_id)
    assert b" 413 " in _answer_before_body(hub, path, hub.token, announced=10 * 1024**4)


# --- 5. a commit in flight cannot land in a repo that reuses the row id -----------------------


def test_slow_commit_to_a_deleted_repo_does_not_land_elsewhere(hub, bob):
    bob_api = HfApi(endpoint=hub.url, token=bob)
    bob_repo = new_repo(bob_api, "bob")
    body = ndjson({"key": "header", "value": {"summary": "late"}},
                  {"key": "file", "value": {"path": "late.txt", "content": "bGF0ZQ==", "encoding": "base64"}})
    with socket.create_connection(("127.0.0.1", hub.server.port), timeout=30) as s:
        s.sendall(f"POST /api/models/{bob_repo}/commit/main HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {bob}\r\nContent-Type: application/x-ndjson\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.5)  # the server has authorised the commit and waits for the rest
        bob_api.delete_repo(bob_repo)
        alice_repo = new_repo(hub.api, "alice", private=True)  # takes the freed row id
        s.sendall(body[10:])
        status = s.recv(100).split(b"\r\n")[0]
    assert b" 404 " in status
    assert hub.api.list_repo_files(alice_repo) == [".gitattributes"]
    assert [c.title for c in hub.api.list_repo_commits(alice_repo)] == ["initial commit"]


# --- 9. names and paths clients mishandle are refused with the reason -------------------------


@pytest.mark.parametrize(
    "path, reason",
    [(".GIT/config", "'.git'"), ("sub/.Git/hooks/x", "'.git'"), (".cache/huggingface/download/x", ".cache/huggingface"),
     ("a/C:/x", "drive letter"), ("c:x", "drive letter"), ("a/" + "n" * 256, "255 bytes"),
     ("x.txt\n", "control character")],
)
def test_paths_clients_mishandle_are_refused(hub, path, reason):
    repo_id = new_repo(hub.api, "alice")
    resp, body = commit(hub, repo_id, {"key": "file", "value": {"path": path, "content": "eA==", "encoding": "base64"}})
    assert resp.status == 400 and reason in resp.getheader("X-Error-Message"), body
    assert hub.api.list_repo_files(repo_id) == [".gitattributes"]


def test_oid_with_trailing_newline_is_refused(hub):
    repo_id = new_repo(hub.api, "alice")
    oid = hashlib.sha256(b"x").hexdigest() + "\n"
    resp, body = commit(hub, repo_id, {"key": "lfsFile", "value": {"path": "a.bin", "oid": oid, "size": 1}})
    assert resp.status == 400 and b"Invalid LFS oid" in body


def test_names_with_newline_or_differing_only_in_case_are_refused(hub):
    name = f"Pub-{uuid.uuid4().hex[:6]}"
    hub.api.create_repo(f"alice/{name}")
    resp, body = raw(hub, "POST", "/api/repos/create", json.dumps({"name": name.lower()}).encode())
    assert resp.status == 400 and b"differs only in letter case" in body
    resp, body = raw(hub, "POST", "/api/repos/create", json.dumps({"name": "nl\n"}).encode())
    assert resp.status == 400 and b"newline" in body
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "hub", "user", "add", "ALICE",
                          "--data", str(hub.data_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "differs only in letter case" in out.stderr


def test_nul_in_revision_is_400_not_a_dropped_connection(hub):
    repo_id = new_repo(hub.api, "alice")
    for path in (f"/{repo_id}/resolve/ma%00in/x", f"/api/models/{repo_id}/revision/ma%00in",
                 f"/api/models/{repo_id}/tree/ma%00in"):
        resp, body = raw(hub, "GET", path)
        assert resp.status == 400 and b"control character" in body


# --- 12. files on disk, links, leftovers, exposure --------------------------------------------


def test_data_folder_is_private_to_the_owner(hub):
    for path in [hub.data_dir, hub.data_dir / "blobs", hub.data_dir / "tmp"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in hub.data_dir.glob("hub.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (hub.data_dir / "blobs").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_upload_links_ignore_the_host_header(hub):
    repo_id = new_repo(hub.api, "alice")
    obj = batch(hub, repo_id, b"\0link" * 10, headers={"Host": "evil.example"})
    for action in obj["actions"].values():
        assert action["href"].startswith(f"http://127.0.0.1:{hub.server.port}/"), action
    resp, body = raw(hub, "GET", f"/api/models/{repo_id}/tree/main?limit=1", headers={"Host": "evil.example"})
    assert b"evil" not in body and "evil" not in (resp.getheader("Link") or "")


def test_temp_files_of_a_killed_upload_are_removed_at_start(tmp_path):
    from hub_fixtures import add_hub_user

    data = tmp_path / "data"
    token = add_hub_user(data, "alice")
    server = HubServer(data).start()
    try:
        api = HfApi(endpoint=server.url, token=token)
        repo_id = new_repo(api, "alice")
        blob = b"\0" * 1000
        api_hub = type("H", (), {"server": server, "token": token, "url": server.url})
        href = batch(api_hub, repo_id, blob)["actions"]["upload"]["href"][len(server.url):]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"PUT {href} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(blob)}\r\n\r\n".encode() + blob[:100])
            deadline = time.monotonic() + 10
            while not list((data / "tmp").iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list((data / "tmp").iterdir()), "the upload should have a temporary file"
            server.kill()
        server.start()
        assert list((data / "tmp").iterdir()) == []
    finally:
        server.stop()


def test_non_loopback_bind_without_public_url_warns(tmp_path):
    # 192.0.2.1 is a documentation address no interface has: the bind fails right after the
    # warning, so nothing ever listens beyond loopback.
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "hub", "serve", "--data", str(tmp_path / "d"),
                          "--host", "192.0.2.1", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert "without --public-url" in out.stderr and "TLS" in out.stderr
    from tunekit.hubserver import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", "https://hub.example") is None
    assert "plain-http" in exposure_warning("0.0.0.0", "http://hub.example")


def test_hub_serve_accepts_verbose(tmp_path):
    server = HubServer(tmp_path / "d", args=["--verbose"]).start()
    try:
        httpx.get(f"{server.url}/api/models", timeout=10).raise_for_status()
    finally:
        server.stop()
    assert '"GET /api/models HTTP/1.1" 200' in server.log()


# --- conformance e, f -------------------------------------------------------------------------


def test_unimplemented_endpoints_answer_501_naming_the_feature(hub):
    repo_id = new_repo(hub.api, "alice")
    with pytest.raises(HfHubHTTPError) as e:
        list(hub.api.get_repo_discussions(repo_id))
    assert e.value.response.status_code == 501
    assert "discussions" in e.value.response.headers["X-Error-Message"]
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.create_collection("mine")
    assert e.value.response.status_code == 501 and "collections" in str(e.value)
    with pytest.raises(RepositoryNotFoundError):  # a missing repo is still a 404
        hub.api.model_info("alice/does-not-exist")


def test_list_repo_refs_with_pull_requests(hub):
    repo_id = new_repo(hub.api, "alice")
    refs = hub.api.list_repo_refs(repo_id, include_pull_requests=True)
    assert refs.pull_requests == [] and [b.name for b in refs.branches] == ["main"]


def test_inline_file_commits_still_work(hub):
    # The plain path the checks above must not disturb.
    repo_id = new_repo(hub.api, "alice")
    hub.api.create_commit(repo_id, operations=[CommitOperationAdd("a.txt", b"a")], commit_message="a")
    assert base64.b64encode(b"a") and "a.txt" in hub.api.list_repo_files(repo_id)
