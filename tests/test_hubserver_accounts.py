"""Revoking access on a running hub (issue 17, item 8) and uploads without HF_HUB_DISABLE_XET
(conformance item a): the ``tunekit hub`` CLI changes the data folder while the server runs, and
the real client (``huggingface_hub``) sees the change on its next request."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from hub_fixtures import hub, hub_cli  # noqa: F401  (fixture)
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def api(hub, token: str) -> HfApi:
    return HfApi(endpoint=hub.url, token=token)


def refused(hub, token: str) -> bool:
    """Whether the server answers this token with 401 (and only then)."""
    try:
        api(hub, token).whoami()
    except HfHubHTTPError as e:
        assert e.response.status_code == 401, e
        return True
    return False


def cli(hub, *args: str, input: str | None = None, ok: bool = True) -> str:
    out = hub_cli(hub.data_dir, *args, input=input)
    assert (out.returncode == 0) == ok, out.stderr
    return out.stdout + out.stderr


def new_user(hub) -> tuple[str, str]:
    name = f"u{uuid.uuid4().hex[:8]}"
    return name, hub.add_user(name)


def test_revoked_token_is_refused_at_once_and_other_tokens_keep_working(hub):
    name, first = new_user(hub)
    second = hub.add_user(name)
    assert api(hub, first).whoami()["name"] == name
    listed = cli(hub, "token", "list", name).split()
    ids = [w for w in listed if len(w) == 12]
    assert len(ids) == 2 and first not in listed and second not in listed  # ids, never tokens
    # By the token itself, read from stdin so it stays out of the shell history.
    assert f"revoked a token of {name}" in cli(hub, "token", "revoke", "-", input=first + "\n")
    assert refused(hub, first)  # the running server, on the very next request
    assert api(hub, second).whoami()["name"] == name
    # By id.
    remaining = [w for w in cli(hub, "token", "list", name).split() if len(w) == 12]
    assert len(remaining) == 1
    cli(hub, "token", "revoke", remaining[0])
    assert refused(hub, second)
    assert "No such token" in cli(hub, "token", "revoke", remaining[0], ok=False)


def test_rotate_revokes_every_old_token_and_prints_a_working_one(hub):
    name, first = new_user(hub)
    second = hub.add_user(name)
    new = cli(hub, "token", "rotate", name).strip()
    assert new.startswith("hf_") and new not in (first, second)
    assert refused(hub, first) and refused(hub, second)
    assert api(hub, new).whoami()["name"] == name
    assert "No user 'nobody'" in cli(hub, "token", "rotate", "nobody", ok=False)


def test_removed_user_loses_access_and_their_repos_only_with_delete_repos(hub):
    name, token = new_user(hub)
    repo_id = f"{name}/private"
    api(hub, token).create_repo(repo_id, private=True)
    # Kept while they own repos: a new user of that name would inherit the private repo.
    assert "still owns 1 repo" in cli(hub, "user", "remove", name, ok=False)
    assert api(hub, token).whoami()["name"] == name
    out = cli(hub, "user", "remove", name, "--delete-repos")
    assert f"deleted {repo_id}" in out
    assert refused(hub, token)
    # The name is free again, and nothing of the old account comes with it.
    again = hub.add_user(name)
    assert list(api(hub, again).list_models(author=name)) == []
    with pytest.raises(RepositoryNotFoundError):
        api(hub, again).model_info(repo_id)


def test_removed_org_member_can_no_longer_read_or_write_its_repos(hub):
    member, token = new_user(hub)
    org = f"o{uuid.uuid4().hex[:8]}"
    cli(hub, "org", "add", org, "--member", hub.user, "--member", member)
    repo_id = f"{org}/internal"
    hub.api.create_repo(repo_id, private=True)
    as_member = api(hub, token)
    as_member.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id=repo_id)
    assert {o["name"] for o in as_member.whoami()["orgs"]} == {org}
    cli(hub, "org", "remove-member", org, member)
    with pytest.raises(RepositoryNotFoundError):  # private: 404, like a missing repo
        as_member.model_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        as_member.create_commit(repo_id, operations=[CommitOperationAdd("b.txt", b"x")], commit_message="x")
    assert as_member.whoami()["orgs"] == []
    assert hub.api.list_repo_files(repo_id) == [".gitattributes", "a.txt"]  # alice still a member
    assert "is not a member" in cli(hub, "org", "remove-member", org, member, ok=False)


# --- conformance a: Xet ---------------------------------------------------------------------

XET_SCRIPT = textwrap.dedent("""
    import sys
    from huggingface_hub import HfApi
    from tunekit.errors import HubError, hub_error
    from tunekit.hub import push_run
    from tunekit.record import describe_folder

    endpoint, token, folder, repo_id = sys.argv[1:]
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id + "-raw")
    try:  # what the plain client does against a hub without Xet
        api.upload_file(path_or_fileobj=folder + "/model.safetensors", path_in_repo="model.safetensors",
                        repo_id=repo_id + "-raw")
        print("RAW UPLOAD WORKED")
    except ConnectionError as e:
        err = hub_error(e, repo_id=repo_id, action="pushing to")
        print("TRANSLATED", type(err).__name__, err)
    run, metrics = describe_folder(folder)
    print("PUSHED", push_run(folder, repo_id, run=run, metrics=metrics, token=token))
""")


@pytest.mark.skipif(importlib.util.find_spec("hf_xet") is None, reason="hf_xet is not installed")
def test_tunekit_pushes_to_its_hub_without_hf_hub_disable_xet(hub, tiny_model_dir, tmp_path):
    repo_id = f"{hub.user}/xet-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in hub.env().items() if k != "HF_HUB_DISABLE_XET"}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    out = subprocess.run([sys.executable, "-c", XET_SCRIPT, hub.url, hub.token, str(tiny_model_dir), repo_id],
                         env=env, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    # The plain client fails (no server answer makes it fall back to LFS) …
    assert "RAW UPLOAD WORKED" not in out.stdout
    # … its error becomes a HubError that says what to set …
    assert "TRANSLATED HubError" in out.stdout and "HF_HUB_DISABLE_XET=1" in out.stdout
    # … and tunekit's own push goes through LFS on its own.
    assert f"PUSHED {hub.url}/{repo_id}" in out.stdout
    files = hub.api.list_repo_files(repo_id)
    assert "model.safetensors" in files
    info = hub.api.get_paths_info(repo_id, ["model.safetensors"])[0]
    assert info.lfs is not None


def test_hub_serve_prints_the_client_settings_at_start(hub):
    log = hub.server.log(tail=10**6)
    assert f"HF_ENDPOINT={hub.url}" in log and "HF_HUB_DISABLE_XET=1" in log
