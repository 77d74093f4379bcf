"""The CS3 APIs a plugin service is served as: requests to plugin calls, plugin results to CS3
messages field by field, and plugin errors to the ``status`` codes Reva's own services return.

Reva's services (``internal/grpc/services/{userprovider,authprovider,groupprovider}``) answer a
driver's ``NotFound`` with CODE_NOT_FOUND where they check for it (GetUser, GetUserByClaim,
GetGroup, GetGroupByClaim, Authenticate) and with CODE_INTERNAL elsewhere; Authenticate answers
``InvalidCredentials`` with CODE_PERMISSION_DENIED ("wrong password") and any other error with
CODE_UNAUTHENTICATED. Messages are Reva's fixed texts: the plugin's own message (which may echo
a secret the client sent) goes to the server log only, redacted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cs3.auth.provider.v1beta1 import provider_api_pb2 as auth_api
from cs3.auth.provider.v1beta1 import resources_pb2 as auth_res
from cs3.identity.group.v1beta1 import group_api_pb2 as group_api
from cs3.identity.group.v1beta1 import resources_pb2 as group_res
from cs3.identity.user.v1beta1 import resources_pb2 as user_res
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
from cs3.rpc.v1beta1 import code_pb2, status_pb2
from cs3.types.v1beta1 import types_pb2
from google.protobuf.message import Message

from .. import _defaults
from .._errors import (
    CallCancelled,
    CallTimeout,
    InvalidCredentials,
    NotFound,
    ProcessError,
    RevaPluginError,
)

#: Calls a plugin method with keyword params (the server binds it to a service and a deadline).
Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]

#: The longest string a request field may carry: ids, claims and queries are short; a megabyte
#: "username" is an attack on the plugin, refused before it gets there.
MAX_FIELD_CHARS = 4096
#: How many filters a Find request may carry.
MAX_FILTERS = 16

USER_API = "cs3.identity.user.v1beta1.UserAPI"
AUTH_API = "cs3.auth.provider.v1beta1.ProviderAPI"
GROUP_API = "cs3.identity.group.v1beta1.GroupAPI"
#: The CS3 service each plugin service type is served as.
APIS: Mapping[str, str] = {
    "userprovider": USER_API,
    "authprovider": AUTH_API,
    "groupprovider": GROUP_API,
}

CODE_NAMES: Mapping[int, str] = {v.number: v.name for v in code_pb2.Code.DESCRIPTOR.values}


class BadRequest(Exception):
    """The request cannot be a valid call (an empty id, an oversized field)."""


class Unserved(Exception):
    """The service is no longer configured (a reload dropped it); its API is going away."""


class BadResult(Exception):
    """The plugin answered with something that does not fit the CS3 message."""


@dataclass(frozen=True)
class Errors:
    """How one RPC reports plugin errors, as Reva's service does for that RPC."""

    failure: str
    failure_code: int = code_pb2.CODE_INTERNAL
    not_found: str | None = None
    wrong_credentials: str | None = None


@dataclass(frozen=True)
class Rpc:
    """One CS3 method served by one plugin service."""

    api: str
    name: str
    service: str
    request: type[Message]
    response: type[Message]
    handle: Callable[[Invoke, Any], Awaitable[Message]]
    errors: Errors


def status(code: int, message: str = "") -> status_pb2.Status:
    """A CS3 status."""
    return status_pb2.Status(code=code, message=message)


def error_status(rpc: Rpc, exc: BaseException) -> tuple[int, str]:
    """The CS3 code and message for ``exc`` raised while serving ``rpc`` (no plugin text)."""
    if isinstance(exc, BadRequest):
        return code_pb2.CODE_INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Unserved):
        return code_pb2.CODE_UNAVAILABLE, f"{rpc.service} is no longer served"
    if isinstance(exc, ProcessError):  # crashed, failed to start, or marked failed
        return code_pb2.CODE_UNAVAILABLE, f"{rpc.service} plugin unavailable"
    if isinstance(exc, CallTimeout):
        return code_pb2.CODE_INTERNAL, f"{rpc.service} plugin timed out"
    if isinstance(exc, CallCancelled):  # the client went away; nobody reads this answer
        return code_pb2.CODE_CANCELLED, f"{rpc.service} call cancelled by the client"
    if isinstance(exc, BadResult):
        return code_pb2.CODE_INTERNAL, f"{rpc.service} plugin returned a malformed result"
    if isinstance(exc, NotFound) and rpc.errors.not_found is not None:
        return code_pb2.CODE_NOT_FOUND, rpc.errors.not_found
    if isinstance(exc, InvalidCredentials) and rpc.errors.wrong_credentials is not None:
        return code_pb2.CODE_PERMISSION_DENIED, rpc.errors.wrong_credentials
    if isinstance(exc, RevaPluginError):
        return rpc.errors.failure_code, rpc.errors.failure
    return code_pb2.CODE_INTERNAL, f"{rpc.service}: internal error"


# -- requests: CS3 → plugin params ----------------------------------------------------------


def _text(value: str, where: str) -> str:
    if len(value) > MAX_FIELD_CHARS:
        raise BadRequest(f"{where} is longer than {MAX_FIELD_CHARS} characters")
    return value


def _user_id(pb: user_res.UserId, where: str = "user_id") -> dict[str, Any]:
    if not pb.opaque_id:
        raise BadRequest(f"{where}.opaque_id is empty")
    out: dict[str, Any] = {
        "idp": _text(pb.idp, f"{where}.idp"),
        "opaque_id": _text(pb.opaque_id, f"{where}.opaque_id"),
    }
    if pb.type:
        out["type"] = int(pb.type)
    return out


def _group_id(pb: group_res.GroupId, where: str = "group_id") -> dict[str, Any]:
    if not pb.opaque_id:
        raise BadRequest(f"{where}.opaque_id is empty")
    return {
        "idp": _text(pb.idp, f"{where}.idp"),
        "opaque_id": _text(pb.opaque_id, f"{where}.opaque_id"),
    }


def _queries(filters: Iterable[Any], query_type: int) -> tuple[list[str], set[int]]:
    """The query strings and the type numbers of a Find request's filters."""
    filters = list(filters)
    if len(filters) > MAX_FILTERS:
        raise BadRequest(f"more than {MAX_FILTERS} filters")
    queries, types = [], set()
    for index, item in enumerate(filters):
        if item.type == query_type:
            queries.append(_text(item.query, f"filters[{index}].query"))
        elif item.type != 0:
            types.add(int(getattr(item, "usertype", 0) or getattr(item, "grouptype", 0)))
    return queries, types


# -- results: plugin dicts → CS3 ------------------------------------------------------------


def _bytes(value: object) -> bytes:
    """An opaque value: base64 as Go's JSON writes ``[]byte``; other text as its UTF-8."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise BadResult("an opaque value must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode("utf-8")


def _entry(raw: object) -> types_pb2.OpaqueEntry:
    if not isinstance(raw, Mapping):
        raise BadResult("an opaque entry must be an object with decoder and value")
    return types_pb2.OpaqueEntry(
        decoder=str(raw.get("decoder", "plain")), value=_bytes(raw.get("value", ""))
    )


def _opaque(raw: object) -> types_pb2.Opaque:
    entries = raw.get("map") if isinstance(raw, Mapping) else None
    if not isinstance(entries, Mapping):
        raise BadResult("opaque must be an object with a map")
    return types_pb2.Opaque(map={str(k): _entry(v) for k, v in entries.items()})


_ENUM_NUMBERS: dict[str, frozenset[int]] = {}


def _enum(value: object, enum: Any) -> int:
    """An enum field from a plugin's number or name; unknown values are the zero value."""
    if isinstance(value, int) and not isinstance(value, bool):
        numbers = _ENUM_NUMBERS.get(enum.DESCRIPTOR.full_name)
        if numbers is None:
            numbers = _ENUM_NUMBERS[enum.DESCRIPTOR.full_name] = frozenset(enum.values())
        return value if value in numbers else 0
    if isinstance(value, str):
        names = enum.keys()  # a protobuf enum wrapper: ``in`` needs its key list
        return int(enum.Value(value)) if value in names else 0
    return 0


_UT = user_res.UserType
_USER_TYPES = frozenset(_UT.values())
_HAS_TENANT = "tenant_id" in user_res.UserId.DESCRIPTOR.fields_by_name


def fill_user_id(target: user_res.UserId, raw: object) -> None:
    """Write a plugin's UserId dict into ``target`` (a field of the response being built)."""
    if not isinstance(raw, Mapping):
        raise BadResult("a UserId must be an object")
    get = raw.get
    if (value := get("idp")) is not None:
        target.idp = value
    if (value := get("opaque_id")) is not None:
        target.opaque_id = value
    kind = get("type", 0)
    if kind:
        target.type = kind if type(kind) is int and kind in _USER_TYPES else _enum(kind, _UT)
    if _HAS_TENANT and get("tenant_id"):  # newer CS3 APIs only
        target.tenant_id = raw["tenant_id"]


def user_id_pb(raw: object) -> user_res.UserId:
    """A plugin's UserId dict as a CS3 UserId."""
    uid = user_res.UserId()
    fill_user_id(uid, raw)
    return uid


def fill_user(target: user_res.User, raw: object) -> None:
    """Write a plugin's User dict into ``target`` (``secret`` and unknown keys never leave).

    Field by field into the response being built: a GetUser's whole CS3 mapping, so each
    assignment counts (this is ~3x faster than building the messages and copying them in).
    """
    if not isinstance(raw, Mapping):
        raise BadResult("a User must be an object")
    target.SetInParent()
    get = raw.get
    if (value := get("id")) is not None:
        fill_user_id(target.id, value)
    if (value := get("username")) is not None:
        target.username = value
    if (value := get("mail")) is not None:
        target.mail = value
    if (value := get("mail_verified")) is not None:
        target.mail_verified = value
    if (value := get("display_name")) is not None:
        target.display_name = value
    if (value := get("uid_number")) is not None:
        target.uid_number = value
    if (value := get("gid_number")) is not None:
        target.gid_number = value
    if value := get("groups"):
        if not isinstance(value, list):
            raise BadResult("a User's groups must be a list")
        target.groups.extend(value)
    if (value := get("opaque")) is not None:
        target.opaque.CopyFrom(_opaque(value))


def user_pb(raw: object) -> user_res.User:
    """A plugin's User dict as a CS3 User (``secret`` and unknown keys never leave)."""
    user = user_res.User()
    fill_user(user, raw)
    return user


def fill_group(target: group_res.Group, raw: object) -> None:
    """Write a plugin's Group dict into ``target``."""
    if not isinstance(raw, Mapping):
        raise BadResult("a Group must be an object")
    target.SetInParent()
    get = raw.get
    for key in ("group_name", "gid_number", "mail", "mail_verified", "display_name"):
        if (value := get(key)) is not None:
            setattr(target, key, value)
    gid = get("id")
    if gid is not None:
        if not isinstance(gid, Mapping):
            raise BadResult("a GroupId must be an object")
        target.id.idp = gid.get("idp") or ""
        target.id.opaque_id = gid.get("opaque_id") or ""
        target.id.type = _enum(gid.get("type", 0), group_res.GroupType)
    members = get("members") or []
    if not isinstance(members, list):
        raise BadResult("a Group's members must be a list")
    for member in members:
        fill_user_id(target.members.add(), member)
    if (value := get("opaque")) is not None:
        target.opaque.CopyFrom(_opaque(value))


def group_pb(raw: object) -> group_res.Group:
    """A plugin's Group dict as a CS3 Group."""
    group = group_res.Group()
    fill_group(group, raw)
    return group


def scope_pb(raw: object) -> auth_res.Scope:
    """One token scope: ``{"resource": {decoder, value}, "role": number or name}``."""
    if not isinstance(raw, Mapping):
        raise BadResult("a scope must be an object")
    scope = auth_res.Scope(role=_enum(raw.get("role", 0), auth_res.Role))
    if raw.get("resource") is not None:
        scope.resource.CopyFrom(_entry(raw["resource"]))
    return scope


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadResult(f"{what} must be a list")
    return value


def _ok() -> status_pb2.Status:
    return status(code_pb2.CODE_OK)


_OK = code_pb2.CODE_OK


# -- the handlers: one per RPC ----------------------------------------------------------------


async def _get_user(invoke: Invoke, req: user_api.GetUserRequest) -> Message:
    params = {
        "user_id": _user_id(req.user_id),
        "skip_fetching_groups": req.skip_fetching_user_groups,
    }
    user = await invoke("get_user", params)
    response = user_api.GetUserResponse()
    response.status.code = _OK
    fill_user(response.user, user)
    return response


async def _get_user_by_claim(invoke: Invoke, req: user_api.GetUserByClaimRequest) -> Message:
    params = {
        "claim": _text(req.claim, "claim"),
        "value": _text(req.value, "value"),
        "skip_fetching_groups": req.skip_fetching_user_groups,
    }
    user = await invoke("get_user_by_claim", params)
    response = user_api.GetUserByClaimResponse()
    response.status.code = _OK
    fill_user(response.user, user)
    return response


async def _get_user_groups(invoke: Invoke, req: user_api.GetUserGroupsRequest) -> Message:
    groups = _list(await invoke("get_user_groups", {"user_id": _user_id(req.user_id)}), "groups")
    return user_api.GetUserGroupsResponse(status=_ok(), groups=groups)


async def _find(
    invoke: Invoke,
    method: str,
    queries: list[str],
    skip: dict[str, bool],
    build: Callable[[list[Mapping[str, Any]]], Message],
) -> Message:
    """Call ``method`` once per query (one call with "" when there is none): every query must
    match, so the answer is the intersection, by id, in the first answer's order; ``build``
    makes the response of it, off the serving loop when the answer is long (a plugin returning
    100k users must not stall every other RPC while their messages are made)."""
    answers = [_list(await invoke(method, {"query": q, **skip}), method) for q in queries or [""]]

    def key(item: object) -> tuple[str, str]:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), Mapping):
            raise BadResult(f"{method} results must be objects with an id")
        return (str(item["id"].get("idp", "")), str(item["id"].get("opaque_id", "")))

    def respond() -> Message:
        keep = set.intersection(*({key(item) for item in answer} for answer in answers))
        return build([item for item in answers[0] if key(item) in keep])

    if sum(len(answer) for answer in answers) <= _defaults.SERVE_BIG_LIST:
        return respond()
    return await asyncio.to_thread(respond)


async def _find_users(invoke: Invoke, req: user_api.FindUsersRequest) -> Message:
    queries, types = _queries(req.filters, user_api.Filter.TYPE_QUERY)
    skip = {"skip_fetching_groups": req.skip_fetching_user_groups}

    def build(found: list[Mapping[str, Any]]) -> Message:
        users = [user_pb(u) for u in found]
        if types:
            users = [u for u in users if u.id.type in types]
        users.sort(key=lambda u: u.username)  # as Reva's service does
        return user_api.FindUsersResponse(status=_ok(), users=users)

    return await _find(invoke, "find_users", queries, skip, build)


async def _authenticate(invoke: Invoke, req: auth_api.AuthenticateRequest) -> Message:
    params = {
        "client_id": _text(req.client_id, "client_id"),
        "client_secret": _text(req.client_secret, "client_secret"),
    }
    result = await invoke("authenticate", params)
    if not isinstance(result, Mapping):
        raise BadResult("authenticate must return an object with user and scopes")
    scopes = result.get("scopes") or {}
    if not isinstance(scopes, Mapping):
        raise BadResult("scopes must be an object keyed by scope name")
    response = auth_api.AuthenticateResponse(
        status=_ok(),
        token_scope={str(name): scope_pb(scope) for name, scope in scopes.items()},
    )
    fill_user(response.user, result.get("user"))
    return response


async def _get_group(invoke: Invoke, req: group_api.GetGroupRequest) -> Message:
    params = {
        "group_id": _group_id(req.group_id),
        "skip_fetching_members": req.skip_fetching_members,
    }
    group = await invoke("get_group", params)
    response = group_api.GetGroupResponse()
    response.status.code = _OK
    fill_group(response.group, group)
    return response


async def _get_group_by_claim(invoke: Invoke, req: group_api.GetGroupByClaimRequest) -> Message:
    params = {
        "claim": _text(req.claim, "claim"),
        "value": _text(req.value, "value"),
        "skip_fetching_members": req.skip_fetching_members,
    }
    group = await invoke("get_group_by_claim", params)
    response = group_api.GetGroupByClaimResponse()
    response.status.code = _OK
    fill_group(response.group, group)
    return response


async def _get_members(invoke: Invoke, req: group_api.GetMembersRequest) -> Message:
    members = _list(await invoke("get_members", {"group_id": _group_id(req.group_id)}), "members")
    return group_api.GetMembersResponse(status=_ok(), members=[user_id_pb(m) for m in members])


async def _has_member(invoke: Invoke, req: group_api.HasMemberRequest) -> Message:
    params = {"group_id": _group_id(req.group_id), "user_id": _user_id(req.user_id)}
    answer = await invoke("has_member", params)
    if not isinstance(answer, bool):
        raise BadResult("has_member must return true or false")
    return group_api.HasMemberResponse(status=_ok(), ok=answer)


async def _find_groups(invoke: Invoke, req: group_api.FindGroupsRequest) -> Message:
    queries, types = _queries(req.filters, group_api.Filter.TYPE_QUERY)
    skip = {"skip_fetching_members": req.skip_fetching_members}

    def build(found: list[Mapping[str, Any]]) -> Message:
        groups = [group_pb(g) for g in found]
        if types:
            groups = [g for g in groups if g.id.type in types]
        groups.sort(key=lambda g: g.group_name)  # as Reva's service does
        return group_api.FindGroupsResponse(status=_ok(), groups=groups)

    return await _find(invoke, "find_groups", queries, skip, build)


def _rpc(api: str, service: str, name: str, module: Any, handle: Any, errors: Errors) -> Rpc:
    return Rpc(
        api,
        name,
        service,
        getattr(module, f"{name}Request"),
        getattr(module, f"{name}Response"),
        handle,
        errors,
    )


_U, _A, _G = "userprovider", "authprovider", "groupprovider"
#: Every RPC served, with the errors Reva's own service returns for it.
RPCS: tuple[Rpc, ...] = (
    _rpc(
        USER_API,
        _U,
        "GetUser",
        user_api,
        _get_user,
        Errors("error getting user", not_found="user not found"),
    ),
    _rpc(
        USER_API,
        _U,
        "GetUserByClaim",
        user_api,
        _get_user_by_claim,
        Errors("error getting user by claim", not_found="user not found"),
    ),
    _rpc(
        USER_API,
        _U,
        "GetUserGroups",
        user_api,
        _get_user_groups,
        Errors("error getting user groups"),
    ),
    _rpc(USER_API, _U, "FindUsers", user_api, _find_users, Errors("error finding users")),
    _rpc(
        AUTH_API,
        _A,
        "Authenticate",
        auth_api,
        _authenticate,
        Errors(
            "error authenticating user",
            failure_code=code_pb2.CODE_UNAUTHENTICATED,
            not_found="unknown client id",
            wrong_credentials="wrong password",
        ),
    ),
    _rpc(
        GROUP_API,
        _G,
        "GetGroup",
        group_api,
        _get_group,
        Errors("error getting group", not_found="group not found"),
    ),
    _rpc(
        GROUP_API,
        _G,
        "GetGroupByClaim",
        group_api,
        _get_group_by_claim,
        Errors("error getting group by claim", not_found="group not found"),
    ),
    _rpc(
        GROUP_API, _G, "GetMembers", group_api, _get_members, Errors("error getting group members")
    ),
    _rpc(
        GROUP_API,
        _G,
        "HasMember",
        group_api,
        _has_member,
        Errors("error checking for group member"),
    ),
    _rpc(GROUP_API, _G, "FindGroups", group_api, _find_groups, Errors("error finding groups")),
)


async def convert(rpc: Rpc, invoke: Invoke, request: Any) -> Message:
    """Serve ``request``: plugin calls through ``invoke``, the CS3 response (OK status).

    A result of the wrong type or range is a :class:`BadResult`; other errors propagate.
    """
    try:
        return await rpc.handle(invoke, request)
    except (TypeError, ValueError) as exc:  # protobuf refusing a field's type or range
        raise BadResult(str(exc)) from exc


def failed(rpc: Rpc, code: int, message: str) -> Message:
    """``rpc``'s response carrying only a failed status."""
    return rpc.response(status=status(code, message))
