"""Plain-gRPC proof: a Python client, with stubs generated from proto/, talks to
a running `keepsake serve`, puts and gets chunks, sees the typed errors, and runs
the README's reflection and Policy/Explain examples.

Run by `cargo xtask python` (part of `cargo xtask ci`), which generates the
stubs, starts the server and passes: URL CREDENTIALS_JSON STUB_DIR.
"""

import json
import sys

url, credentials_path, stub_dir = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stub_dir)

import blake3  # noqa: E402
import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from keepsake.v1 import accounts_pb2, accounts_pb2_grpc  # noqa: E402
from keepsake.v1 import library_pb2, library_pb2_grpc  # noqa: E402
from keepsake.v1 import policy_pb2, policy_pb2_grpc, store_pb2, store_pb2_grpc  # noqa: E402

checks = 0
failures = 0


def check(name, ok, detail=""):
    global checks, failures
    checks += 1
    if not ok:
        failures += 1
        print(f"FAIL {name} {detail}")
    else:
        print(f"ok   {name}")


def reason(err):
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


channel = grpc.insecure_channel(url.removeprefix("http://"))
version = [("x-keepsake-client-version", "0.2.0")]
accounts = accounts_pb2_grpc.AccountsStub(channel)
credentials = json.load(open(credentials_path))
try:
    accounts.SignIn(accounts_pb2.SignInRequest(account=credentials["account"], password="not it"), metadata=version)
    check("a wrong password is UNAUTHENTICATED", False, "no error")
except grpc.RpcError as err:
    check("a wrong password is UNAUTHENTICATED", reason(err) == "UNAUTHENTICATED", str(err.code()))
token = accounts.SignIn(
    accounts_pb2.SignInRequest(account=credentials["account"], password=credentials["password"]),
    metadata=version,
).access.token
auth = [("authorization", f"Bearer {token}")] + version
me = accounts.GetAccount(accounts_pb2.GetAccountRequest(), metadata=auth).account
check("the first account is an administrator on the free plan", me.admin and me.plan.name == "free", str(me))
store = store_pb2_grpc.ChunkStoreStub(channel)

health = health_pb2_grpc.HealthStub(channel)
reply = health.Check(health_pb2.HealthCheckRequest(service="keepsake.v1.ChunkStore"))
check("health answers without a token", reply.status == health_pb2.HealthCheckResponse.SERVING)

session = store.BeginSession(
    store_pb2.BeginSessionRequest(expected_bytes=3 * 100_000, ttl_seconds=600, request_id="py-1"),
    metadata=auth,
).session_id
again = store.BeginSession(
    store_pb2.BeginSessionRequest(expected_bytes=3 * 100_000, ttl_seconds=600, request_id="py-1"),
    metadata=auth,
).session_id
check("BeginSession is idempotent by request_id", session == again)

datas = [bytes([i]) * 100_000 + b"python" for i in range(3)]
chunks = [store_pb2.Chunk(id=blake3.blake3(d).digest(), data=d) for d in datas]


def requests():
    yield store_pb2.PutChunksRequest(session_id=session, chunks=chunks)


acked = [i for r in store.PutChunks(requests(), metadata=auth) for i in r.acknowledged_ids]
check("PutChunks acknowledges every chunk", sorted(acked) == sorted(c.id for c in chunks))

missing = store.FindMissing(
    store_pb2.FindMissingRequest(session_id=session, ids=[c.id for c in chunks]), metadata=auth
).missing_ids
check("FindMissing is empty after put", len(missing) == 0)

got = [c for m in store.GetChunks(store_pb2.GetChunksRequest(ids=[c.id for c in chunks]), metadata=auth) for c in m.chunks]
check("GetChunks returns the same bytes", [g.data for g in got] == datas)

try:
    bad = store_pb2.Chunk(id=blake3.blake3(b"claimed").digest(), data=b"different")
    list(store.PutChunks(iter([store_pb2.PutChunksRequest(session_id=session, chunks=[bad])]), metadata=auth))
    check("a forged chunk is refused", False, "no error")
except grpc.RpcError as err:
    check(
        "a forged chunk is refused with INVALID_ARGUMENT / HASH_MISMATCH",
        err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(err) == "HASH_MISMATCH",
        f"{err.code()} {reason(err)}",
    )

try:
    list(store.GetChunks(store_pb2.GetChunksRequest(ids=[blake3.blake3(b"absent").digest()]), metadata=auth))
    check("an absent chunk is NOT_FOUND", False, "no error")
except grpc.RpcError as err:
    check("an absent chunk is NOT_FOUND", err.code() == grpc.StatusCode.NOT_FOUND, str(err.code()))

try:
    store.GetUsage(store_pb2.GetUsageRequest(), metadata=version)
    check("no token is UNAUTHENTICATED", False, "no error")
except grpc.RpcError as err:
    check(
        "no token is UNAUTHENTICATED",
        err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == "UNAUTHENTICATED",
        str(err.code()),
    )

usage = store.GetUsage(store_pb2.GetUsageRequest(), metadata=auth)
check("usage counts the bytes once", usage.bytes_owned >= sum(len(d) for d in datas))

library = library_pb2_grpc.LibraryStub(channel)
feed = library.ListChanges(library_pb2.ListChangesRequest(cursor=0, page_size=100), metadata=auth)
check("a new library's feed is empty", len(feed.changes) == 0 and not feed.more, str(feed))
try:
    library.GetAsset(library_pb2.GetAssetRequest(asset_id="nope"), metadata=auth)
    check("an unknown asset is NOT_FOUND", False, "no error")
except grpc.RpcError as err:
    check("an unknown asset is NOT_FOUND", err.code() == grpc.StatusCode.NOT_FOUND, str(err.code()))

# The README says grpcurl needs no .proto files: reflection must list the services, tokenless.
reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
listing = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
names = {s.name for s in listing.list_services_response.service}
check(
    "reflection (v1alpha) lists every Keepsake service without a token",
    {"keepsake.v1.ChunkStore", "keepsake.v1.Policy", "keepsake.v1.Delta", "keepsake.v1.Library", "keepsake.v1.Accounts"}
    <= names,
    str(sorted(names)),
)

# The README's Policy/Explain example, byte for byte the same JSON.
readme_example = {
    "snapshot": {
        "account": "me",
        "sync_enabled": True,
        "network": "NETWORK_TYPE_CELLULAR",
        "client_version": {"minor": 1},
    }
}
explained = policy_pb2_grpc.PolicyStub(channel).Explain(
    json_format.ParseDict(readme_example, policy_pb2.ExplainRequest()), metadata=auth
)
check(
    "the README's Policy/Explain example says mobile data is not allowed",
    not explained.syncing and "CELLULAR_NOT_ALLOWED" in explained.checklist_json,
    explained.checklist,
)

print(f"python: {checks - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
