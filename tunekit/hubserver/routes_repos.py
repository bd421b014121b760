"""Account and repo endpoints: whoami, create/delete/settings, info, listings, tree, commits."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..config import TRUE_WORDS
from .bodies import read_form, read_json
from .cards import MAX_CARD_BYTES, CardError, parse_card_data
from .context import base_url, caller_of, find_repo, hub_of, repo_url, require_user
from .errors import ApiError, bad_request, not_implemented
from .payloads import (
    card_data,
    commit_json,
    file_json,
    folder_json,
    list_tree,
    model_meta,
    repo_json,
)
from .records import DEFAULT_BRANCH, GITATTRIBUTES, Entry
from .validate import (
    SPACE_SDKS,
    URL_PREFIX,
    check_branch,
    check_repo_path,
    check_revision,
    repo_type,
    url_param,
)

router = APIRouter()


@dataclass
class Page:
    """One page of a listing and the ``Link`` header pointing at the next one."""

    items: list
    headers: dict

    def response(self) -> JSONResponse:
        return JSONResponse(self.items, headers=self.headers)


def paginated(
    request: Request, items: list, limit_param: str | None = None, page_size: int | None = None
) -> Page:
    """One page of ``items`` with a GitHub-style ``Link: <…>; rel="next"`` header, which
    huggingface_hub's ``paginate`` follows. The cursor is an offset; ``limit`` may shrink pages."""
    page_size = min(page_size or 10**9, hub_of(request).settings.page_size)
    try:
        if limit_param:
            page_size = max(1, min(page_size, int(limit_param)))
        start = int(request.query_params.get("cursor", "0"))
    except ValueError:
        raise bad_request("cursor and limit must be integers") from None
    page = items[start : start + page_size]
    headers = {}
    if start + page_size < len(items):
        next_url = request.url.include_query_params(cursor=start + page_size)
        # base_url, not the request's Host header (see context.base_url); the path as it was
        # sent, so that an encoded slash in a branch name stays encoded.
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("ascii", errors="replace") if raw_path else next_url.path
        next_url = f"{base_url(request)}{path}?{next_url.query}"
        headers["Link"] = f'<{next_url}>; rel="next"'
    return Page(page, headers)


def _add_last_commits(hub, repo, commit, entries: list[dict]) -> None:
    """Add ``lastCommit`` (what ``expand=True`` asks for) to tree or paths-info entries."""
    last = hub.store.last_commits(repo, commit, [e["path"] for e in entries])
    for entry in entries:
        c = last[entry["path"]]
        entry["lastCommit"] = {"id": c.id, "title": c.title, "date": c.date}


def _truthy(value: str | None) -> bool:
    # A query flag the Hub's clients send as true/1; anything else (or nothing) is off.
    return (value or "").strip().lower() in TRUE_WORDS


@router.get("/api/whoami-v2")
def whoami(request: Request) -> dict:
    caller = caller_of(request)
    name = require_user(caller)
    return {
        "type": "user",
        "id": name,
        "name": name,
        "fullname": name,
        "email": None,
        "emailVerified": False,
        "isPro": False,
        "orgs": [
            {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
            for org in sorted(caller.orgs)
        ],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "tunekit-hub", "role": "write"},
        },
    }


@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    caller = caller_of(request)
    user = require_user(caller)
    body = await read_json(request)
    rtype = body.get("type") or "model"
    if rtype not in URL_PREFIX:
        raise bad_request(f"Invalid repo type {rtype!r}: expected one of {sorted(URL_PREFIX)}")
    namespace = body.get("organization") or user
    name = body.get("name")
    if not caller.owns(namespace):
        raise ApiError(
            403, f"You don't have the rights to create a repo under the namespace {namespace!r}"
        )
    visibility = body.get("visibility")
    private = (
        visibility == "private" if visibility is not None else bool(body.get("private", False))
    )
    sdk = body.get("sdk")
    if rtype == "space" and sdk not in SPACE_SDKS:
        raise bad_request(f"Invalid space sdk {sdk!r}: expected one of {list(SPACE_SDKS)}")
    hub = hub_of(request)
    gitattributes = Entry.regular(hub.blobs.put_bytes(GITATTRIBUTES), GITATTRIBUTES)
    repo, created = hub.store.create_repo(
        rtype,
        namespace,
        name,
        private=private,
        sdk=sdk if rtype == "space" else None,
        author=user,
        initial_files={".gitattributes": gitattributes},
    )
    url = repo_url(request, repo)
    if not created:
        # The client's exist_ok=True only looks at the 409 status, but older clients read the url.
        return JSONResponse(
            {"error": f"You already created this {rtype} repo", "url": url}, status_code=409
        )
    return JSONResponse({"url": url, "name": repo.repo_id, "id": repo.repo_id})


@router.delete("/api/repos/delete")
async def delete_repo(request: Request) -> Response:
    caller = caller_of(request)
    user = require_user(caller)
    body = await read_json(request)
    rtype = body.get("type") or "model"
    if rtype not in URL_PREFIX:
        raise bad_request(f"Invalid repo type {rtype!r}")
    repo, _ = find_repo(
        request, rtype, body.get("organization") or user, body.get("name"), write=True
    )
    hub_of(request).store.delete_repo(repo)
    return Response(status_code=200)


@router.put("/api/{segment}/{namespace}/{name}/settings")
async def update_settings(request: Request, segment: str, namespace: str, name: str) -> dict:
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    body = await read_json(request)
    # Never accept a setting and ignore it: gating in particular would look like protection.
    if body.get("gated") not in (None, False, "false"):
        raise not_implemented("gated repos and access requests (update_repo_settings(gated=...))")
    unknown = sorted(set(body) - {"private", "visibility", "gated"})
    if unknown:
        raise not_implemented(f"repo settings {', '.join(map(repr, unknown))}")
    visibility = body.get("visibility")
    if visibility is None and "private" in body:
        visibility = "private" if body["private"] else "public"
    if visibility is not None:
        if visibility not in ("private", "public"):
            raise bad_request(f"Invalid visibility {visibility!r}")
        hub_of(request).store.set_private(repo, visibility == "private")
    return {"private": visibility == "private" if visibility else repo.private}


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    caller_of(request)  # a bad token is refused before the body is read
    body = await read_json(request, limit=2 * MAX_CARD_BYTES)
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("Expected 'content' (the README.md text)")
    try:
        parse_card_data(content)
    except CardError as e:
        return JSONResponse({"errors": [{"message": str(e)}], "warnings": []}, status_code=400)
    return JSONResponse({"errors": [], "warnings": []})


# ``sort`` values the client sends → the repo info field they order by. Downloads, likes and
# trending scores are all 0 on this hub, so those orders fall back to the newest first.
SORT_FIELDS = {
    "lastModified": "lastModified",
    "last_modified": "lastModified",
    "createdAt": "createdAt",
    "created_at": "createdAt",
    "id": "id",
    "downloads": "downloads",
    "likes": "likes",
    "trendingScore": "likes",
    "trending_score": "likes",
}


def _info_of(hub, repo, revision: str = DEFAULT_BRANCH, *, siblings: bool = True) -> dict:
    commit = hub.store.resolve(repo, revision)
    tree = hub.store.tree(commit)
    card = card_data(hub.blobs, tree)
    meta = model_meta(hub.blobs, tree, card) if repo.type == "model" else None
    return repo_json(repo, commit, tree, card, meta=meta, siblings=siblings)


@router.get("/api/{segment}")
def list_repos(request: Request, segment: str) -> JSONResponse:
    """``list_models``/``list_datasets``/``list_spaces``: ``search`` (in the id), ``author``,
    ``filter`` (every one must be a tag of the repo), ``pipeline_tag``, ``sort`` + ``direction``
    (-1, the default, is descending) and ``limit``."""
    rtype = repo_type(segment)
    caller = caller_of(request)
    params = request.query_params
    hub = hub_of(request)
    search = (params.get("search") or "").lower()
    filters = [f for value in params.getlist("filter") for f in value.split(",") if f]
    pipeline_tag = params.get("pipeline_tag")
    sort = params.get("sort")
    if sort is not None and sort not in SORT_FIELDS:
        raise bad_request(f"Invalid sort {sort!r}: expected one of {sorted(set(SORT_FIELDS))}")
    direction = params.get("direction", "-1")
    if direction not in ("1", "-1"):
        raise bad_request(f"Invalid direction {direction!r}: expected 1 or -1")
    full = _truthy(params.get("full"))
    out = []
    for repo in hub.store.list_repos(rtype, params.get("author")):
        if not caller.can_read(repo) or search not in repo.repo_id.lower():
            continue
        info = _info_of(hub, repo, siblings=full)
        if any(f not in info["tags"] for f in filters):
            continue
        if pipeline_tag and info.get("pipeline_tag") != pipeline_tag:
            continue
        out.append(info)
    if sort is not None:
        field = SORT_FIELDS[sort]
        # Stable sorts: ties keep the newest-first order (ids break ties of equal counts).
        out.sort(key=lambda i: i.get("createdAt") or "", reverse=True)
        out.sort(key=lambda i: i.get(field) or 0 if field in ("downloads", "likes") else i[field],
                 reverse=direction == "-1")
    return paginated(request, out, params.get("limit")).response()


def _info(request: Request, segment: str, namespace: str, name: str, revision: str) -> dict:
    revision = check_revision(revision)
    repo, _ = find_repo(request, segment, namespace, name)
    return _info_of(hub_of(request), repo, revision)


@router.get("/api/{segment}/{namespace}/{name}")
def repo_info(request: Request, segment: str, namespace: str, name: str) -> dict:
    return _info(request, segment, namespace, name, DEFAULT_BRANCH)


@router.get("/api/{segment}/{namespace}/{name}/revision/{revision:path}")
def repo_info_at(request: Request, segment: str, namespace: str, name: str, revision: str) -> dict:
    return _info(request, segment, namespace, name, revision)


@router.get("/api/{segment}/{namespace}/{name}/tree/{revision}")
@router.get("/api/{segment}/{namespace}/{name}/tree/{revision}/{path:path}")
def tree(
    request: Request, segment: str, namespace: str, name: str, revision: str, path: str = ""
) -> JSONResponse:
    revision = check_revision(revision)
    path = path.strip("/")
    if path:
        path = check_repo_path(path)
    repo, _ = find_repo(request, segment, namespace, name)
    hub = hub_of(request)
    commit = hub.store.resolve(repo, revision)
    recursive = _truthy(request.query_params.get("recursive"))
    entries = list_tree(hub.store.tree(commit), path, recursive)
    if entries is None:
        raise ApiError(404, f"Folder not found: {path}", code="EntryNotFound")
    if _truthy(request.query_params.get("expand")):
        # Finding each entry's last commit walks the history, so pages are small (as on the Hub).
        page = paginated(request, entries, request.query_params.get("limit"), page_size=50)
        _add_last_commits(hub, repo, commit, page.items)
        return page.response()
    return paginated(request, entries, request.query_params.get("limit")).response()


@router.post("/api/{segment}/{namespace}/{name}/paths-info/{revision}")
async def paths_info(
    request: Request, segment: str, namespace: str, name: str, revision: str
) -> list:
    revision = check_revision(revision)
    repo, _ = find_repo(request, segment, namespace, name)
    form = await read_form(request)
    paths = [check_repo_path(p.strip("/")) for p in form.get("paths", [])]
    hub = hub_of(request)
    commit = hub.store.resolve(repo, revision)
    tree = hub.store.tree(commit)
    out = []
    for path in paths:
        if path in tree:
            out.append(file_json(path, tree[path]))
        elif any(p.startswith(path + "/") for p in tree):
            out.append(folder_json(path, tree))
    if _truthy((form.get("expand") or [""])[0]):
        _add_last_commits(hub, repo, commit, out)
    return out


@router.get("/api/{segment}/{namespace}/{name}/commits/{revision}")
def list_commits(
    request: Request, segment: str, namespace: str, name: str, revision: str
) -> JSONResponse:
    revision = check_revision(revision)
    repo, _ = find_repo(request, segment, namespace, name)
    store = hub_of(request).store
    commits = [commit_json(c) for c in store.history(repo, store.resolve(repo, revision))]
    return paginated(request, commits, request.query_params.get("limit")).response()


@router.get("/api/{segment}/{namespace}/{name}/refs")
def list_refs(request: Request, segment: str, namespace: str, name: str) -> dict:
    repo, _ = find_repo(request, segment, namespace, name)
    store = hub_of(request).store
    refs: dict = {
        "branches": [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
            for b, c in store.branches(repo).items()
        ],
        "converts": [],
        "tags": [
            {"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
            for t, c in store.tags(repo).items()
        ],
    }
    if _truthy(request.query_params.get("include_prs")):
        # This hub has no pull requests; the client still reads the key when it asks for them.
        refs["pullRequests"] = []
    return refs


@router.post("/api/{segment}/{namespace}/{name}/branch/{branch:path}")
async def create_branch(
    request: Request, segment: str, namespace: str, name: str, branch: str
) -> dict:
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    body = await read_json(request)
    store = hub_of(request).store
    start = store.resolve(repo, check_revision(body.get("startingPoint") or DEFAULT_BRANCH))
    store.create_branch(repo, check_branch(branch), start)
    return {}


@router.delete("/api/{segment}/{namespace}/{name}/branch/{branch:path}")
def delete_branch(request: Request, segment: str, namespace: str, name: str, branch: str) -> dict:
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    hub_of(request).store.delete_branch(repo, url_param(branch))
    return {}


@router.post("/api/{segment}/{namespace}/{name}/tag/{revision}")
async def create_tag(
    request: Request, segment: str, namespace: str, name: str, revision: str
) -> dict:
    revision = check_revision(revision)
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    body = await read_json(request)
    store = hub_of(request).store
    message = body.get("message") or ""
    store.create_tag(repo, body.get("tag"), store.resolve(repo, revision), str(message))
    return {}


@router.delete("/api/{segment}/{namespace}/{name}/tag/{tag}")
def delete_tag(request: Request, segment: str, namespace: str, name: str, tag: str) -> dict:
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    hub_of(request).store.delete_tag(repo, url_param(tag))
    return {}


@router.post("/api/repos/move")
async def move_repo(request: Request) -> dict:
    caller = caller_of(request)
    user = require_user(caller)
    body = await read_json(request)
    rtype = body.get("type") or "model"
    if rtype not in URL_PREFIX:
        raise bad_request(f"Invalid repo type {rtype!r}")
    ids = [body.get("fromRepo"), body.get("toRepo")]
    if not all(isinstance(i, str) and i.count("/") == 1 for i in ids):
        raise bad_request("Expected 'fromRepo' and 'toRepo' as namespace/name")
    (src_ns, src_name), (dst_ns, dst_name) = (i.split("/") for i in ids)
    repo, _ = find_repo(request, rtype, src_ns, src_name, write=True)
    moved = hub_of(request).store.move_repo(repo, dst_ns, dst_name, user)
    return {"url": repo_url(request, moved)}


@router.post("/api/{segment}/{namespace}/{name}/super-squash/{branch}")
async def super_squash(
    request: Request, segment: str, namespace: str, name: str, branch: str
) -> dict:
    branch = check_revision(branch)
    repo, caller = find_repo(request, segment, namespace, name, write=True)
    body = await read_json(request)
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = f"Super-squash branch '{branch}'"
    oid = hub_of(request).store.super_squash(repo, branch, message.strip(), caller.name)
    return {"commitId": oid}
