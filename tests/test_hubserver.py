"""Conformance of tunekit's hub server with the real huggingface_hub client (no mocked HTTP)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    ModelCard,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

BIG = 11 * 1024 * 1024  # over the 10 MB the Hub accepts inline: must go through LFS


def new_repo(hub, kind: str = "m", **kwargs) -> str:
    repo_id = f"{hub.user}/{kind}-{uuid.uuid4().hex[:8]}"
    hub.api.create_repo(repo_id, **kwargs)
    return repo_id


def download(hub, repo_id, filename, tmp_path, **kwargs) -> Path:
    kwargs.setdefault("token", hub.token)
    return Path(
        hf_hub_download(repo_id, filename, endpoint=hub.url, cache_dir=tmp_path / "cache", **kwargs)
    )


def raw(hub, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Send a request byte for byte (the client itself refuses bad paths before sending them)."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.server.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in {"Authorization": f"Bearer {hub.token}", **(headers or {})}.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(body or b"")))
    conn.endheaders(body or b"")
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


@pytest.fixture(scope="module")
def scratch_repo(hub) -> str:
    """One empty repo shared by the tests that only check that bad requests are refused."""
    return new_repo(hub, "scratch")


# --- accounts and repos ---------------------------------------------------------------------


def test_whoami(hub):
    me = hub.api.whoami()
    assert me["name"] == hub.user
    assert me["type"] == "user"


def test_bad_token_is_401(hub):
    from huggingface_hub import HfApi

    bad = HfApi(endpoint=hub.url, token="hf_" + "x" * 34)
    with pytest.raises(HfHubHTTPError) as e:
        bad.whoami()
    assert e.value.response.status_code == 401
    repo_id = new_repo(hub)
    with pytest.raises(HfHubHTTPError) as e:
        bad.model_info(repo_id)
    assert e.value.response.status_code == 401
    assert not isinstance(e.value, RepositoryNotFoundError)


def test_create_repo_exist_ok(hub):
    repo_id = new_repo(hub)
    url = hub.api.create_repo(repo_id, exist_ok=True)
    assert url.repo_id == repo_id
    assert str(url) == f"{hub.url}/{repo_id}"
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.create_repo(repo_id)
    assert e.value.response.status_code == 409
    # Like huggingface.co, a new repo has one commit holding a .gitattributes.
    assert hub.api.list_repo_files(repo_id) == [".gitattributes"]


def test_delete_repo(hub):
    repo_id = new_repo(hub)
    hub.api.delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hub.api.model_info(repo_id)
    hub.api.delete_repo(repo_id, missing_ok=True)


def test_cannot_create_in_someone_elses_namespace(hub):
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.create_repo(f"bob-{uuid.uuid4().hex[:6]}/x")
    assert e.value.response.status_code == 403


# --- uploads, commits, downloads ------------------------------------------------------------


def test_upload_file_and_download(hub, tmp_path):
    repo_id = new_repo(hub)
    info = hub.api.upload_file(
        path_or_fileobj=b"hello hub", path_in_repo="greeting.txt", repo_id=repo_id
    )
    path = download(hub, repo_id, "greeting.txt", tmp_path)
    assert path.read_bytes() == b"hello hub"
    assert path.parent.name == info.oid  # the snapshot folder is named by X-Repo-Commit
    with pytest.raises(EntryNotFoundError):
        download(hub, repo_id, "missing.txt", tmp_path)
    with pytest.raises(RevisionNotFoundError):
        download(hub, repo_id, "greeting.txt", tmp_path, revision="no-such-branch")


def test_upload_folder_sends_big_files_through_lfs(hub, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "notes.md").write_text("notes")
    big = os.urandom(BIG)
    (src / "weights.bin").write_bytes(big)
    repo_id = new_repo(hub)
    hub.api.upload_folder(repo_id=repo_id, folder_path=src, commit_message="add model")

    info = hub.api.model_info(repo_id, files_metadata=True)
    sib = {s.rfilename: s for s in info.siblings}
    assert set(sib) == {".gitattributes", "config.json", "sub/notes.md", "weights.bin"}
    assert sib["weights.bin"].lfs is not None
    assert sib["weights.bin"].lfs.sha256 == hashlib.sha256(big).hexdigest()
    assert sib["weights.bin"].size == BIG
    assert sib["config.json"].lfs is None

    local = download(hub, repo_id, "weights.bin", tmp_path)
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(big).digest()

    tree = {f.path: f for f in hub.api.list_repo_tree(repo_id, recursive=True)}
    assert "sub" in tree and tree["weights.bin"].lfs.size == BIG
    assert [f.path for f in hub.api.list_repo_tree(repo_id, path_in_repo="sub")] == ["sub/notes.md"]

    # Uploading the same folder again changes nothing: the server reports the remote oids.
    again = hub.api.upload_folder(repo_id=repo_id, folder_path=src)
    assert again.oid == info.sha


def test_create_commit_with_several_operations(hub):
    repo_id = new_repo(hub)
    api = hub.api
    api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("a.txt", b"one"),
            CommitOperationAdd("b.txt", b"two"),
            CommitOperationAdd("dir/c.txt", b"three"),
            CommitOperationAdd("dir/d.txt", b"four"),
        ],
        commit_message="first",
    )
    second = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("a.txt", b"ONE"),  # overwrite
            CommitOperationDelete("b.txt"),
            CommitOperationDelete("dir/", is_folder=True),
            CommitOperationAdd("e.txt", b"five"),
        ],
        commit_message="second",
        commit_description="overwrite, delete a file and a folder",
    )
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "a.txt", "e.txt"]
    assert api.model_info(repo_id).sha == second.oid
    with pytest.raises(EntryNotFoundError):
        api.delete_file("b.txt", repo_id)
    api.delete_file("e.txt", repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "a.txt"]


def test_list_repo_commits_and_old_revisions(hub, tmp_path):
    repo_id = new_repo(hub)
    first = hub.api.upload_file(
        path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo_id, commit_message="v1"
    )
    second = hub.api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id, commit_message="v2"
    )
    hub.api.upload_file(
        path_or_fileobj=b"x", path_in_repo="later.txt", repo_id=repo_id, commit_message="v3"
    )
    commits = hub.api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["v3", "v2", "v1", "initial commit"]
    assert commits[1].commit_id == second.oid and commits[0].authors == [hub.user]

    old = Path(
        snapshot_download(
            repo_id, revision=first.oid, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "c"
        )
    )
    assert (old / "f.txt").read_bytes() == b"v1" and not (old / "later.txt").exists()
    assert hub.api.model_info(repo_id, revision=second.oid).sha == second.oid
    assert download(hub, repo_id, "f.txt", tmp_path, revision=second.oid).read_bytes() == b"v2"
    latest = Path(
        snapshot_download(repo_id, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "c")
    )
    assert sorted(p.name for p in latest.iterdir()) == [".gitattributes", "f.txt", "later.txt"]


def test_parent_commit_must_be_head(hub):
    repo_id = new_repo(hub)
    base = hub.api.model_info(repo_id).sha
    hub.api.upload_file(path_or_fileobj=b"1", path_in_repo="x", repo_id=repo_id, parent_commit=base)
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.upload_file(
            path_or_fileobj=b"2", path_in_repo="y", repo_id=repo_id, parent_commit=base
        )
    assert e.value.response.status_code == 412


def test_card_data_and_model_card_round_trip(hub, tmp_path):
    repo_id = new_repo(hub)
    card = ModelCard(
        "---\nlicense: apache-2.0\nlibrary_name: peft\ntags: [tunekit, lora]\n"
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n"
        "# My adapter\n\nTrained with tunekit.\n"
    )
    with hub.client():  # ModelCard takes no endpoint argument
        card.push_to_hub(repo_id)
        loaded = ModelCard.load(repo_id)
    assert loaded.data.license == "apache-2.0" and "Trained with tunekit." in loaded.text
    info = hub.api.model_info(repo_id)
    assert info.card_data.library_name == "peft"
    assert {"tunekit", "lora", "peft", "license:apache-2.0"} <= set(info.tags)
    with pytest.raises(ValueError, match="Invalid metadata"):
        hub.api.upload_file(
            path_or_fileobj=b"---\n[oops: \n---\n", path_in_repo="README.md", repo_id=repo_id
        )


def test_dataset_and_space_round_trip(hub, tmp_path):
    ds = f"{hub.user}/ds-{uuid.uuid4().hex[:6]}"
    hub.api.create_repo(ds, repo_type="dataset")
    hub.api.upload_file(
        path_or_fileobj=b'{"messages": []}\n',
        path_in_repo="train.jsonl",
        repo_id=ds,
        repo_type="dataset",
    )
    assert (
        download(hub, ds, "train.jsonl", tmp_path, repo_type="dataset").read_bytes()
        == b'{"messages": []}\n'
    )
    assert "train.jsonl" in hub.api.list_repo_files(ds, repo_type="dataset")
    assert hub.api.dataset_info(ds).id == ds

    space = f"{hub.user}/sp-{uuid.uuid4().hex[:6]}"
    url = hub.api.create_repo(space, repo_type="space", space_sdk="gradio")
    assert url.repo_type == "space"
    hub.api.upload_file(
        path_or_fileobj=b"import gradio\n", path_in_repo="app.py", repo_id=space, repo_type="space"
    )
    info = hub.api.space_info(space)
    assert info.sdk == "gradio" and "app.py" in [s.rfilename for s in info.siblings]
    snap = Path(
        snapshot_download(
            space, repo_type="space", endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "s"
        )
    )
    assert (snap / "app.py").read_bytes() == b"import gradio\n"
    # A model with the same name is a different repo.
    with pytest.raises(RepositoryNotFoundError):
        hub.api.model_info(space)


def test_list_models_by_author(hub):
    repo_id = new_repo(hub, "listed")
    ids = [m.id for m in hub.api.list_models(author=hub.user)]
    assert repo_id in ids


def test_tree_pagination(hub):
    from huggingface_hub.utils._pagination import paginate

    repo_id = new_repo(hub)
    hub.api.create_commit(
        repo_id,
        operations=[CommitOperationAdd(f"f{i}.txt", b"%d" % i) for i in range(5)],
        commit_message="five",
    )
    pages = paginate(
        f"{hub.url}/api/models/{repo_id}/tree/main",
        params={"recursive": True, "limit": 2},
        headers={"authorization": f"Bearer {hub.token}"},
    )
    assert sorted(e["path"] for e in pages) == sorted(
        [".gitattributes"] + [f"f{i}.txt" for i in range(5)]
    )


# --- access control -------------------------------------------------------------------------


def test_private_repo_is_invisible_to_others(hub, tmp_path):
    from huggingface_hub import HfApi

    repo_id = new_repo(hub, "private", private=True)
    hub.api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=repo_id)
    assert hub.api.model_info(repo_id).private is True

    bob = HfApi(endpoint=hub.url, token=hub.add_user("bob"))
    anon = HfApi(endpoint=hub.url, token=False)
    for api in (bob, anon):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            api.list_repo_files(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        download(hub, repo_id, "s.txt", tmp_path, token=False)
    with pytest.raises(RepositoryNotFoundError):
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id)
    assert repo_id not in [m.id for m in anon.list_models(author=hub.user)]


def test_public_repo_is_read_only_to_others(hub):
    from huggingface_hub import HfApi

    repo_id = new_repo(hub)
    bob = HfApi(endpoint=hub.url, token=hub.add_user("bob2"))
    assert bob.model_info(repo_id).id == repo_id
    with pytest.raises(HfHubHTTPError) as e:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id)
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=hub.url, token=False).delete_repo(repo_id)
    assert e.value.response.status_code == 401


def test_org_members_can_write(hub):
    from huggingface_hub import HfApi

    carol = hub.add_user("carol")
    org = f"team-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tunekit.cli",
            "hub",
            "org",
            "add",
            org,
            "--member",
            "carol",
            "--data",
            str(hub.data_dir),
        ],
        check=True,
        capture_output=True,
    )
    api = HfApi(endpoint=hub.url, token=carol)
    assert org in [o["name"] for o in api.whoami()["orgs"]]
    api.create_repo(f"{org}/shared", private=True)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=f"{org}/shared")
    with pytest.raises(RepositoryNotFoundError):
        hub.api.model_info(f"{org}/shared")  # alice is not a member


@pytest.mark.parametrize(
    "path",
    [
        "/{repo}/resolve/main/../../etc/passwd",
        "/{repo}/resolve/main/%2e%2e/%2e%2e/etc/passwd",
        "/{repo}/resolve/main/sub/..%2f..%2fx",
        "/{repo}/resolve/main/%252e%252e/x",
        "/{repo}/resolve/main/a%5c..%5cb",
        "/{repo}/resolve/main/a%00b",
        "/{repo}/resolve/main//etc/passwd",
        "/api/models/{repo}/tree/main/%2e%2e",
    ],
)
def test_path_traversal_in_urls_is_rejected(hub, scratch_repo, path):
    resp, _ = raw(hub, "GET", path.format(repo=scratch_repo))
    assert resp.status == 400


@pytest.mark.parametrize(
    "bad",
    ["../escape.txt", "/abs.txt", "a/../../b", "a\\..\\b", "nul\x00.txt", "a//b", ".git/config"],
)
def test_path_traversal_in_commits_is_rejected(hub, scratch_repo, bad):
    repo_id = scratch_repo
    lines = [
        {"key": "header", "value": {"summary": "evil"}},
        {"key": "file", "value": {"path": bad, "content": "eA==", "encoding": "base64"}},
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    resp, _ = raw(
        hub,
        "POST",
        f"/api/models/{repo_id}/commit/main",
        body,
        {"Content-Type": "application/x-ndjson"},
    )
    assert resp.status == 400
    assert hub.api.list_repo_files(repo_id) == [".gitattributes"]


def test_lfs_upload_is_verified(hub):
    repo_id = new_repo(hub)
    data = b"\0binary" * 1000
    oid = hashlib.sha256(data).hexdigest()
    batch = {
        "operation": "upload",
        "transfers": ["basic"],
        "hash_algo": "sha256",
        "objects": [{"oid": oid, "size": len(data)}],
    }
    resp, body = raw(
        hub,
        "POST",
        f"/{repo_id}.git/info/lfs/objects/batch",
        json.dumps(batch).encode(),
        {"Content-Type": "application/vnd.git-lfs+json"},
    )
    assert resp.status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    upload_path = href[len(hub.url) :]
    assert raw(hub, "PUT", upload_path, b"X" + data[1:])[0].status == 400  # wrong sha256
    assert raw(hub, "PUT", upload_path, data[:-1])[0].status == 400  # wrong size
    assert (
        raw(hub, "PUT", upload_path.replace("sig=", "sig=0"), data)[0].status == 403
    )  # forged URL
    # A commit may not point at an object that was never uploaded.
    lines = [
        {"key": "header", "value": {"summary": "x"}},
        {
            "key": "lfsFile",
            "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)},
        },
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    assert raw(hub, "POST", f"/api/models/{repo_id}/commit/main", body)[0].status == 400
    assert raw(hub, "PUT", upload_path, data)[0].status == 200
    assert raw(hub, "POST", f"/api/models/{repo_id}/commit/main", body)[0].status == 200


# --- concurrency and durability -------------------------------------------------------------


def test_concurrent_commits_all_land(hub):
    repo_id = new_repo(hub)
    n = 8
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            hub.api.upload_file(
                path_or_fileobj=f"file {i}".encode(),
                path_in_repo=f"c/{i}.txt",
                repo_id=repo_id,
                commit_message=f"commit {i}",
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(hub.api.list_repo_files(repo_id)) == sorted(
        [".gitattributes"] + [f"c/{i}.txt" for i in range(n)]
    )
    titles = [c.title for c in hub.api.list_repo_commits(repo_id)]
    assert (
        sorted(titles[:-1]) == sorted(f"commit {i}" for i in range(n))
        and titles[-1] == "initial commit"
    )


def test_restart_between_push_and_pull(hub, tmp_path):
    repo_id = new_repo(hub, "durable", private=True)
    big = os.urandom(BIG)
    hub.api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("small.txt", b"small"),
            CommitOperationAdd("big.safetensors", big),
        ],
        commit_message="before restart",
    )
    hub.restart()
    snap = Path(
        snapshot_download(repo_id, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "c")
    )
    assert (snap / "small.txt").read_bytes() == b"small"
    assert (snap / "big.safetensors").read_bytes() == big
    assert hub.api.list_repo_commits(repo_id)[0].title == "before restart"
    assert hub.api.whoami()["name"] == hub.user  # tokens survive too


# --- the hf command line --------------------------------------------------------------------


def test_hf_cli_upload_and_download(hub, tmp_path):
    hf = shutil.which("hf") or str(Path(sys.executable).with_name("hf"))
    repo_id = f"{hub.user}/cli-{uuid.uuid4().hex[:6]}"
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    env = hub.env()
    env["HF_HOME"] = str(tmp_path / "hf-home")
    up = subprocess.run(
        [hf, "upload", repo_id, str(src), "."], env=env, capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    out = tmp_path / "out"
    down = subprocess.run(
        [hf, "download", repo_id, "--local-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    assert (out / "adapter_config.json").read_text() == '{"r": 8}'
    assert (out / "adapter_model.safetensors").read_bytes() == b"\0" * 2048
    sib = {s.rfilename: s for s in hub.api.model_info(repo_id).siblings}
    assert sib["adapter_model.safetensors"].lfs is not None  # binary formats go through LFS
