"""The depot CLI's services that depot-api does not serve, answered with what to do instead.

Without these, a call would get a bare 404 (which the CLI reports as `unimplemented` with no
explanation); with them, the user reads why and what works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.api.guard import Context
from depot_api.gen.depot.cli.v1 import push_connect, push_pb
from depot_api.gen.depot.cli.v1beta1 import login_connect, login_pb

_NO_LOGIN = (
    "depot login is not served by depot-api: create a token with "
    "`depot-api admin create-user-token` (or create-token) and set DEPOT_TOKEN"
)
_NO_PUSH = (
    "depot push is not served: depot-api has no image registry; build with --push to push "
    "to your own registry"
)


class CliLoginServiceImpl(login_connect.LoginService):
    async def start_login(
        self, request: login_pb.StartLoginRequest, ctx: Context
    ) -> login_pb.StartLoginResponse:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_LOGIN)

    async def finish_login(
        self, request: login_pb.FinishLoginRequest, ctx: Context
    ) -> AsyncIterator[login_pb.FinishLoginResponse]:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_LOGIN)
        yield  # a generator: the stream ends with the error above


class CliPushServiceImpl(push_connect.PushService):
    async def start_push(
        self, request: push_pb.StartPushRequest, ctx: Context
    ) -> push_pb.StartPushResponse:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_PUSH)

    async def finish_push(
        self, request: push_pb.FinishPushRequest, ctx: Context
    ) -> push_pb.FinishPushResponse:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_PUSH)
