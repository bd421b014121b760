"""Hub conformance gaps of issue 17 (items b, c, d, g, h, i, j), each against a real server on
loopback driven by the real clients: ``HfApi``, ``hf_hub_download``/``snapshot_download`` and, for
``pipeline_tag``, transformers' own ``push_to_hub`` and ``pipeline``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, RevisionNotFoundError


def new_repo(api: HfApi, owner: str = "alice", **kwargs) -> str:
    repo_id = f"{owner}/r-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, **kwargs)
    return repo_id


def put(api: HfApi, repo_id: str, files: dict[str, bytes], **kwargs) -> str:
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    return api.create_commit(repo_id, operations=ops, commit_message=f"add {sorted(files)}", **kwargs).oid


def download(hub, repo_id: str, filename: str, revision: str, tmp_path) -> bytes:
    path = hf_hub_download(repo_id, filename, revision=revision, endpoint=hub.url, token=hub.token,
                           cache_dir=tmp_path / f"cache-{uuid.uuid4().hex[:6]}")
    with open(path, "rb") as f:
        return f.read()


# --- i. short commit ids ----------------------------------------------------------------------


def test_short_commit_ids_name_revisions_and_parent_commits(hub, tmp_path):
    repo_id = new_repo(hub.api)
    first = put(hub.api, repo_id, {"a.txt": b"one"})
    put(hub.api, repo_id, {"a.txt": b"two"})
    short = first[:7]
    assert hub.api.model_info(repo_id, revision=short).sha == first
    assert download(hub, repo_id, "a.txt", short, tmp_path) == b"one"
    assert [f.path for f in hub.api.list_repo_tree(repo_id, revision=short)] == [".gitattributes", "a.txt"]
    # parent_commit: a short id of the head passes, of an older commit fails with 412.
    head = hub.api.model_info(repo_id).sha
    put(hub.api, repo_id, {"b.txt": b"b"}, parent_commit=head[:8])
    with pytest.raises(HfHubHTTPError) as e:
        put(hub.api, repo_id, {"c.txt": b"c"}, parent_commit=short)
    assert e.value.response.status_code == 412
    with pytest.raises(RevisionNotFoundError):
        hub.api.model_info(repo_id, revision="0000000")


# --- d. branches with '/' ---------------------------------------------------------------------


def test_branch_names_with_slashes_are_readable(hub, tmp_path):
    repo_id = new_repo(hub.api)
    put(hub.api, repo_id, {"a.txt": b"main"})
    branch = "feature/deep/x"
    hub.api.create_branch(repo_id, branch=branch)
    sha = put(hub.api, repo_id, {"dir/b.txt": b"on the branch"}, revision=branch)
    assert hub.api.model_info(repo_id, revision=branch).sha == sha
    assert download(hub, repo_id, "dir/b.txt", branch, tmp_path) == b"on the branch"
    tree = hub.api.list_repo_tree(repo_id, path_in_repo="dir", revision=branch)
    assert [f.path for f in tree] == ["dir/b.txt"]
    assert [p.path for p in hub.api.get_paths_info(repo_id, ["dir/b.txt"], revision=branch)] == ["dir/b.txt"]
    assert hub.api.list_repo_commits(repo_id, revision=branch)[0].commit_id == sha
    snap = snapshot_download(repo_id, revision=branch, endpoint=hub.url, token=hub.token,
                             cache_dir=tmp_path / "snap")
    assert open(f"{snap}/dir/b.txt", "rb").read() == b"on the branch"
    assert branch in [b.name for b in hub.api.list_repo_refs(repo_id).branches]
    hub.api.delete_branch(repo_id, branch=branch)
    assert [b.name for b in hub.api.list_repo_refs(repo_id).branches] == ["main"]


# --- c. tags ----------------------------------------------------------------------------------


def test_tags_create_list_download_and_delete(hub, tmp_path):
    repo_id = new_repo(hub.api)
    v1 = put(hub.api, repo_id, {"w.txt": b"v1"})
    hub.api.create_tag(repo_id, tag="v1.0", tag_message="first")
    put(hub.api, repo_id, {"w.txt": b"v2"})
    hub.api.create_tag(repo_id, tag="release/2", revision=v1[:7])
    refs = hub.api.list_repo_refs(repo_id)
    assert {(t.name, t.ref, t.target_commit) for t in refs.tags} == {
        ("v1.0", "refs/tags/v1.0", v1), ("release/2", "refs/tags/release/2", v1)}
    assert download(hub, repo_id, "w.txt", "v1.0", tmp_path) == b"v1"
    assert download(hub, repo_id, "w.txt", "release/2", tmp_path) == b"v1"
    assert download(hub, repo_id, "w.txt", "main", tmp_path) == b"v2"
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.create_tag(repo_id, tag="v1.0")
    assert e.value.response.status_code == 409
    hub.api.create_tag(repo_id, tag="v1.0", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.create_tag(repo_id, tag="main")  # a branch's name: ambiguous
    assert e.value.response.status_code == 409
    hub.api.delete_tag(repo_id, tag="release/2")
    hub.api.delete_tag(repo_id, tag="v1.0")
    assert hub.api.list_repo_refs(repo_id).tags == []
    with pytest.raises(RevisionNotFoundError):
        hub.api.model_info(repo_id, revision="v1.0")
    bob = hub.add_user(f"b{uuid.uuid4().hex[:6]}")
    with pytest.raises(HfHubHTTPError) as e:  # tags are writes
        HfApi(endpoint=hub.url, token=bob).create_tag(repo_id, tag="mine")
    assert e.value.response.status_code == 403


# --- b. listings --------------------------------------------------------------------------------


def card(**meta) -> bytes:
    lines = [f"{k}: {v}" for k, v in meta.items()]
    return ("---\n" + "\n".join(lines) + "\n---\n# card\n").encode()


def test_list_models_filters_and_sorts(hub):
    owner = f"lm{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=hub.url, token=hub.add_user(owner))
    gen = new_repo(api, owner)
    put(api, gen, {"README.md": card(pipeline_tag="text-generation", library_name="peft", tags="[lora, chat]")})
    time.sleep(0.01)
    cls = new_repo(api, owner)
    put(api, cls, {"README.md": card(pipeline_tag="text-classification", tags="[chat]", language="fr")})
    time.sleep(0.01)
    bare = new_repo(api, owner)

    def ids(**kwargs) -> list[str]:
        return [m.id for m in api.list_models(author=owner, **kwargs)]

    assert ids(filter="lora") == [gen]
    assert ids(filter="chat") == [cls, gen]
    assert ids(filter=["chat", "fr"]) == [cls]  # every filter must match
    assert ids(filter="peft") == [gen]  # library names are tags
    assert ids(pipeline_tag="text-classification") == [cls]
    assert ids(search=bare.split("/")[1]) == [bare]
    assert ids(sort="created_at") == [bare, cls, gen]
    assert ids(sort="created_at", limit=2) == [bare, cls]
    # last_modified: the README commits moved gen and cls after bare was created.
    put(api, gen, {"x.txt": b"touch"})
    assert ids(sort="last_modified")[0] == gen
    asc = httpx_get(hub, "/api/models", author=owner, sort="createdAt", direction="1")
    assert [m["id"] for m in asc] == [gen, cls, bare]
    with pytest.raises(BadRequestError):
        list(api.list_models(sort="nonsense"))


def httpx_get(hub, path: str, **params):
    import httpx

    r = httpx.get(hub.url + path, params=params, headers={"Authorization": f"Bearer {hub.token}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_list_datasets_filters_on_card_fields(hub):
    owner = f"ld{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=hub.url, token=hub.add_user(owner))
    ru = new_repo(api, owner, repo_type="dataset")
    put(api, ru, {"README.md": card(language="[ru]", task_categories="[text-generation]")}, repo_type="dataset")
    en = new_repo(api, owner, repo_type="dataset")
    put(api, en, {"README.md": card(language="[en]", tags="[fiftyone]")}, repo_type="dataset")

    def ids(**kwargs) -> list[str]:
        return sorted(d.id for d in api.list_datasets(author=owner, **kwargs))

    assert ids(language="ru") == [ru]
    assert ids(task_categories="text-generation") == [ru]
    assert ids(filter="fiftyone") == [en]
    assert ids(filter=("language:en", "fiftyone")) == [en]
    assert ids(filter="language:de") == []
    assert ids() == sorted([ru, en])


# --- h. pipeline_tag and library from config.json ----------------------------------------------

PIPELINE_SCRIPT = textwrap.dedent("""
    import sys
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    folder, repo_id = sys.argv[1:]
    AutoModelForCausalLM.from_pretrained(folder).push_to_hub(repo_id)
    AutoTokenizer.from_pretrained(folder).push_to_hub(repo_id)
    pipe = pipeline(model=repo_id)  # no task: read from the Hub's pipeline_tag
    print("TASK", pipe.task)
    print("OUT", pipe("Hello", max_new_tokens=3, do_sample=False)[0]["generated_text"][:5])
""")


def test_transformers_pipeline_finds_the_task_of_a_model_pushed_by_transformers(hub, tiny_model_dir, tmp_path):
    repo_id = f"{hub.user}/pushed-{uuid.uuid4().hex[:6]}"
    env = dict(hub.env(), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    out = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(tiny_model_dir), repo_id], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TASK text-generation" in out.stdout and "OUT Hello" in out.stdout
    info = hub.api.model_info(repo_id)
    assert info.pipeline_tag == "text-generation" and info.library_name == "transformers"
    assert [m.id for m in hub.api.list_models(pipeline_tag="text-generation", search=repo_id.split("/")[1])] == [repo_id]


def test_card_fields_win_over_inferred_ones(hub):
    repo_id = new_repo(hub.api)
    put(hub.api, repo_id, {"config.json": b'{"architectures": ["BertForSequenceClassification"]}'})
    info = hub.api.model_info(repo_id)
    assert (info.pipeline_tag, info.library_name) == ("text-classification", "transformers")
    put(hub.api, repo_id, {"README.md": card(pipeline_tag="fill-mask", library_name="sentence-transformers")})
    info = hub.api.model_info(repo_id)
    assert (info.pipeline_tag, info.library_name) == ("fill-mask", "sentence-transformers")
    adapter = new_repo(hub.api)
    put(hub.api, adapter, {"adapter_config.json": b'{"task_type": "CAUSAL_LM", "peft_type": "LORA"}'})
    info = hub.api.model_info(adapter)
    assert (info.pipeline_tag, info.library_name) == ("text-generation", "peft")


# --- j. move_repo, super_squash_history, expand --------------------------------------------------


def test_move_repo_keeps_history_and_frees_the_old_name(hub, tmp_path):
    repo_id = new_repo(hub.api, private=True)
    sha = put(hub.api, repo_id, {"a.txt": b"moved"})
    org = f"mo{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "tunekit.cli", "hub", "org", "add", org, "--member", hub.user,
                    "--data", str(hub.data_dir)], check=True, timeout=60)
    target = f"{org}/renamed"
    hub.api.move_repo(repo_id, target)
    assert hub.api.model_info(target).sha == sha and hub.api.model_info(target).private
    assert download(hub, target, "a.txt", "main", tmp_path) == b"moved"
    assert not hub.api.repo_exists(repo_id)
    hub.api.create_repo(repo_id)  # the old name is free
    outsider = HfApi(endpoint=hub.url, token=hub.add_user(f"x{uuid.uuid4().hex[:6]}"))
    with pytest.raises(HfHubHTTPError):  # cannot move someone else's repo, nor into their namespace
        outsider.move_repo(target, f"{outsider.whoami()['name']}/stolen")
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.move_repo(repo_id, target)  # taken
    assert e.value.response.status_code == 409


def test_super_squash_history_leaves_one_commit_and_drops_the_old_ones(hub, tmp_path):
    repo_id = new_repo(hub.api)
    leaked = put(hub.api, repo_id, {"secret.txt": b"hf_leaked"})
    put(hub.api, repo_id, {"a.txt": b"a"})
    hub.api.delete_file("secret.txt", repo_id)
    hub.api.super_squash_history(repo_id, commit_message="squashed")
    commits = hub.api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == ["squashed"]
    assert sorted(hub.api.list_repo_files(repo_id)) == [".gitattributes", "a.txt"]
    with pytest.raises(RevisionNotFoundError):
        download(hub, repo_id, "secret.txt", leaked, tmp_path)


def test_expand_reports_the_last_commit_of_each_entry(hub):
    repo_id = new_repo(hub.api)
    first = put(hub.api, repo_id, {"a.txt": b"a", "d/x.txt": b"x"})
    second = put(hub.api, repo_id, {"d/y.txt": b"y"})
    entries = {e.path: e for e in hub.api.list_repo_tree(repo_id, expand=True)}
    assert entries["a.txt"].last_commit.oid == first
    assert entries["d"].last_commit.oid == second and entries["d"].last_commit.title.startswith("add")
    infos = {p.path: p for p in hub.api.get_paths_info(repo_id, ["a.txt", "d/x.txt", "d"], expand=True)}
    assert infos["a.txt"].last_commit.oid == first and infos["d/x.txt"].last_commit.oid == first
    assert infos["d"].last_commit.oid == second
    assert hub.api.get_paths_info(repo_id, ["a.txt"])[0].last_commit is None  # only when asked


def test_expand_pages_follow_on_a_branch_with_a_slash(hub):
    # expand=True pages hold 50 entries; the next-page link must keep the branch's encoded '/'.
    repo_id = new_repo(hub.api)
    hub.api.create_branch(repo_id, branch="team/a")
    sha = put(hub.api, repo_id, {f"f{i:03}.txt": b"%d" % i for i in range(60)}, revision="team/a")
    entries = list(hub.api.list_repo_tree(repo_id, revision="team/a", expand=True))
    assert len(entries) == 61 and {e.last_commit.oid for e in entries if e.path != ".gitattributes"} == {sha}


# --- g. gating is refused, not ignored ---------------------------------------------------------


def test_gating_is_refused_with_501_and_the_repo_stays_ungated(hub):
    repo_id = new_repo(hub.api)
    with pytest.raises(HfHubHTTPError) as e:
        hub.api.update_repo_settings(repo_id, gated="auto")
    assert e.value.response.status_code == 501 and "gated" in e.value.response.headers["X-Error-Message"]
    assert hub.api.model_info(repo_id).gated is False
    hub.api.update_repo_settings(repo_id, private=True)  # what it does support still works
    assert hub.api.model_info(repo_id).private
